/* citycard.hsm._tc_native: the per-tap loop of hsm.tc_batch.verify_taps in C (an optional
 * extension; tc_batch falls back to Python without it).
 *
 * verify(taps, keys) checks, per tap, the TC (9F26) over its AC input and the IAD's EC balance MAC,
 * under session keys derived from the tap's card keys and ATC (pboc-notes §2.4, §4.1–4.3):
 *   session key = E(card key, 000000000000‖ATC ‖ 000000000000‖ATC⊕FFFF) — 3DES (then odd parity)
 *                 or SM4;
 *   TC          = the first 8 bytes of the MAC of the AC input padded by ISO/IEC 9797-1 method 2 —
 *                 retail MAC (MAC algorithm 3) or SM4 CBC-MAC;
 *   balance MAC = the first 4 bytes of the MAC of ATC ‖ balance(5) ‖ 00, padded the same way.
 * It answers one byte per tap: 0 both verify, 1 the TC does not, 2 the balance MAC does not.
 *
 * The ciphers are the system libcrypto's, reached through the function addresses that
 * crypto.libcrypto found and checked (bind): this module links against nothing, needs no OpenSSL
 * headers, and computes with the same library the Python path uses. Its EVP contexts are this
 * module's own; every call holds the GIL throughout, so no two threads share them at once.
 * Clear keys live only on this function's stack and in those contexts (the HSM layer). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define SUITE_INTL 0
#define SUITE_GM 1
#define DATA_BYTES_MAX 4096
#define IAD_BYTES 19

typedef struct { unsigned char opaque[128]; } DES_key_schedule;  /* openssl/des.h: 16 × 8 bytes */
typedef struct evp_cipher_ctx_st EVP_CIPHER_CTX;
typedef struct evp_cipher_st EVP_CIPHER;

typedef void (*des_set_key_fn)(const unsigned char *key, DES_key_schedule *schedule);
typedef unsigned int (*des_cbc_cksum_fn)(const unsigned char *input, unsigned char *output, long length,
                                         DES_key_schedule *schedule, const unsigned char *ivec);
typedef void (*des_ede3_cbc_fn)(const unsigned char *input, unsigned char *output, long length,
                                DES_key_schedule *ks1, DES_key_schedule *ks2, DES_key_schedule *ks3,
                                unsigned char *ivec, int enc);
typedef EVP_CIPHER_CTX *(*ctx_new_fn)(void);
typedef void (*ctx_free_fn)(EVP_CIPHER_CTX *ctx);
typedef int (*encrypt_init_fn)(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *type, void *impl, const unsigned char *key,
                               const unsigned char *iv);
typedef int (*encrypt_update_fn)(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl, const unsigned char *in,
                                 int inl);

static struct {
    des_set_key_fn set_key;
    des_cbc_cksum_fn cbc_cksum;
    des_ede3_cbc_fn ede3_cbc;
    ctx_new_fn ctx_new;
    ctx_free_fn ctx_free;
    encrypt_init_fn init;
    encrypt_update_fn update;
    EVP_CIPHER_CTX *sm4_ecb, *sm4_cbc;
} ossl;

static const unsigned char ZEROS[16] = {0};

static void odd_parity(unsigned char *key, int n) {
    for (int i = 0; i < n; i++) {
        unsigned char b = key[i] & 0xFE;
        b |= (unsigned char)((__builtin_popcount(b) & 1) ^ 1);
        key[i] = b;
    }
}

/* 3DES (K1‖K2‖K1) ECB of one block: CBC of one block with a zero IV */
static void tdes_block(DES_key_schedule *k1, DES_key_schedule *k2, const unsigned char in[8], unsigned char out[8]) {
    unsigned char iv[8] = {0};
    ossl.ede3_cbc(in, out, 8, k1, k2, k1, iv, 1);
}

/* ISO/IEC 9797-1 MAC algorithm 3 (retail MAC), IV zero, of padded data of two blocks or more */
static void retail_mac(const unsigned char key[16], const unsigned char *data, int size, unsigned char mac[8]) {
    DES_key_schedule k1, k2;
    unsigned char chain[8], last[8];
    ossl.set_key(key, &k1);
    ossl.set_key(key + 8, &k2);
    ossl.cbc_cksum(data, chain, size - 8, &k1, ZEROS);
    for (int i = 0; i < 8; i++) last[i] = chain[i] ^ data[size - 8 + i];
    tdes_block(&k1, &k2, last, mac);
}

static int sm4_ecb(const unsigned char key[16], const unsigned char in[16], unsigned char out[16]) {
    int outl = 0;
    return ossl.init(ossl.sm4_ecb, NULL, NULL, key, NULL) && ossl.update(ossl.sm4_ecb, out, &outl, in, 16) &&
           outl == 16;
}

static int sm4_cbc_mac(const unsigned char key[16], const unsigned char *data, int size, unsigned char mac[16]) {
    unsigned char out[DATA_BYTES_MAX];
    int outl = 0;
    if (!ossl.init(ossl.sm4_cbc, NULL, NULL, key, ZEROS) || !ossl.update(ossl.sm4_cbc, out, &outl, data, size) ||
        outl != size)
        return 0;
    memcpy(mac, out + size - 16, 16);
    return 1;
}

/* method 2: 80 then 00 up to a multiple of block; returns the padded size */
static int pad(unsigned char *buffer, int size, int block) {
    buffer[size++] = 0x80;
    while (size % block) buffer[size++] = 0x00;
    return size;
}

static int equal_in_constant_time(const unsigned char *a, const unsigned char *b, int n) {
    unsigned char diff = 0;
    for (int i = 0; i < n; i++) diff |= (unsigned char)(a[i] ^ b[i]);
    return diff == 0;
}

static int bytes_of(PyObject *value, Py_ssize_t length_wanted, const char *what, const unsigned char **out,
                    Py_ssize_t *length) {
    if (!PyBytes_Check(value)) {
        PyErr_Format(PyExc_TypeError, "%s must be bytes", what);
        return 0;
    }
    *length = PyBytes_GET_SIZE(value);
    if (length_wanted >= 0 && *length != length_wanted) {
        PyErr_Format(PyExc_ValueError, "%s must be %zd bytes, got %zd", what, length_wanted, *length);
        return 0;
    }
    *out = (const unsigned char *)PyBytes_AS_STRING(value);
    return 1;
}

/* The MAC of padded data under the session key of this tap's ATC (blocks: the session-key input)
 * and a card key: its DES schedules (INTL) or the key itself (GM). 0 with an exception set. */
static int session_mac(int suite, const unsigned char *card_key, DES_key_schedule *schedules,
                       const unsigned char blocks[16], const unsigned char *data, int size, unsigned char mac[16]) {
    unsigned char key[16];
    if (suite == SUITE_INTL) {
        tdes_block(&schedules[0], &schedules[1], blocks, key);
        tdes_block(&schedules[0], &schedules[1], blocks + 8, key + 8);
        odd_parity(key, 16);
        retail_mac(key, data, size, mac);
    } else if (!sm4_ecb(card_key, blocks, key) || !sm4_cbc_mac(key, data, size, mac)) {
        PyErr_SetString(PyExc_ValueError, "libcrypto SM4 failed");
        return 0;
    }
    memset(key, 0, sizeof key);
    return 1;
}

/* One tap: 0, 1 or 2 (above); -1 with an exception set. */
static int verify_one(int suite, const unsigned char *ac_card, const unsigned char *mac_card,
                      DES_key_schedule card_schedules[4], const unsigned char atc[2], const unsigned char *ac_input,
                      Py_ssize_t ac_size, const unsigned char tc[8], const unsigned char iad[IAD_BYTES]) {
    unsigned char blocks[16] = {0}, data[DATA_BYTES_MAX + 32], mac[16];
    memcpy(blocks + 6, atc, 2);
    blocks[14] = (unsigned char)~atc[0];
    blocks[15] = (unsigned char)~atc[1];
    int block = suite == SUITE_INTL ? 8 : 16;
    memcpy(data, ac_input, (size_t)ac_size);
    if (!session_mac(suite, ac_card, &card_schedules[0], blocks, data, pad(data, (int)ac_size, block), mac))
        return -1;
    if (!equal_in_constant_time(mac, tc, 8)) return 1;
    /* 9F10: 8 standard bytes, then 0A 01 balance(5) MAC(4); MAC input ATC ‖ balance ‖ 00 */
    memcpy(data, atc, 2);
    memcpy(data + 2, iad + 10, 5);
    data[7] = 0x00;
    if (!session_mac(suite, mac_card, &card_schedules[2], blocks, data, pad(data, 8, block), mac)) return -1;
    return equal_in_constant_time(mac, iad + 15, 4) ? 0 : 2;
}

/* verify(taps, keys) -> bytes: taps[i] = (PAN, PSN, 9F36, AC input, 9F26, 9F10) as in
 * tc_batch.TapToVerify, keys[i] = (suite: 0 INTL / 1 GM, AC card key, MAC card key), 16-byte keys.
 * The same keys object for consecutive taps (a card's taps) reuses its DES key schedules. */
static PyObject *verify(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *taps, *keys;
    if (ossl.set_key == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_tc_native: bind() was not called");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &taps, &PyList_Type, &keys)) return NULL;
    Py_ssize_t count = PyList_GET_SIZE(taps);
    if (PyList_GET_SIZE(keys) != count) {
        PyErr_SetString(PyExc_ValueError, "taps and keys differ in length");
        return NULL;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, count);
    if (result == NULL) return NULL;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    DES_key_schedule schedules[4];
    PyObject *scheduled = NULL;  /* the keys tuple the schedules are of */
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *tap = PyList_GET_ITEM(taps, i), *pair = PyList_GET_ITEM(keys, i);
        const unsigned char *atc, *ac_input, *tc, *iad, *ac_card, *mac_card;
        Py_ssize_t n, ac_size;
        long suite;
        if (!PyTuple_Check(tap) || PyTuple_GET_SIZE(tap) != 6 || !PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 3) {
            PyErr_SetString(PyExc_TypeError, "a tap is a 6-tuple and its keys a 3-tuple");
            goto fail;
        }
        suite = PyLong_AsLong(PyTuple_GET_ITEM(pair, 0));
        if (suite == -1 && PyErr_Occurred()) goto fail;
        if (suite != SUITE_INTL && suite != SUITE_GM) {
            PyErr_Format(PyExc_ValueError, "suite %ld is neither 0 (INTL) nor 1 (GM)", suite);
            goto fail;
        }
        if (!bytes_of(PyTuple_GET_ITEM(pair, 1), 16, "AC card key", &ac_card, &n) ||
            !bytes_of(PyTuple_GET_ITEM(pair, 2), 16, "MAC card key", &mac_card, &n) ||
            !bytes_of(PyTuple_GET_ITEM(tap, 2), 2, "9F36", &atc, &n) ||
            !bytes_of(PyTuple_GET_ITEM(tap, 3), -1, "AC input", &ac_input, &ac_size) ||
            !bytes_of(PyTuple_GET_ITEM(tap, 4), 8, "9F26", &tc, &n) ||
            !bytes_of(PyTuple_GET_ITEM(tap, 5), IAD_BYTES, "9F10", &iad, &n))
            goto fail;
        if (ac_size > DATA_BYTES_MAX - 16 || (suite == SUITE_INTL && ac_size < 8)) {
            /* a retail MAC needs two blocks or more, as crypto.mac's and libcrypto.py's */
            PyErr_Format(PyExc_ValueError, "AC input of %zd bytes; %d to %d", ac_size, suite == SUITE_INTL ? 8 : 0,
                         DATA_BYTES_MAX - 16);
            goto fail;
        }
        if (suite == SUITE_INTL && pair != scheduled) {
            ossl.set_key(ac_card, &schedules[0]);
            ossl.set_key(ac_card + 8, &schedules[1]);
            ossl.set_key(mac_card, &schedules[2]);
            ossl.set_key(mac_card + 8, &schedules[3]);
            scheduled = pair;
        }
        int status = verify_one((int)suite, ac_card, mac_card, schedules, atc, ac_input, ac_size, tc, iad);
        if (status < 0) goto fail;
        out[i] = (unsigned char)status;
    }
    memset(schedules, 0, sizeof schedules);
    return result;
fail:
    memset(schedules, 0, sizeof schedules);
    Py_DECREF(result);
    return NULL;
}

static void free_contexts(void) {
    if (ossl.ctx_free != NULL) {
        if (ossl.sm4_ecb != NULL) ossl.ctx_free(ossl.sm4_ecb);
        if (ossl.sm4_cbc != NULL) ossl.ctx_free(ossl.sm4_cbc);
    }
    ossl.sm4_ecb = ossl.sm4_cbc = NULL;
}

static void *address_of(PyObject *addresses, const char *name) {
    PyObject *value = PyDict_GetItemString(addresses, name);  /* borrowed */
    if (value == NULL) {
        PyErr_Format(PyExc_KeyError, "_tc_native.bind: no address for %s", name);
        return NULL;
    }
    void *pointer = PyLong_AsVoidPtr(value);
    if (pointer == NULL && !PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "_tc_native.bind: %s is NULL", name);
    return pointer;
}

/* bind(addresses): the libcrypto functions and EVP ciphers by name (crypto.libcrypto.addresses). */
static PyObject *bind(PyObject *module, PyObject *addresses) {
    (void)module;
    if (!PyDict_Check(addresses)) {
        PyErr_SetString(PyExc_TypeError, "addresses must be a dict");
        return NULL;
    }
    void *p[9];
    static const char *names[9] = {
        "DES_set_key_unchecked", "DES_cbc_cksum", "DES_ede3_cbc_encrypt", "EVP_CIPHER_CTX_new",
        "EVP_CIPHER_CTX_free", "EVP_EncryptInit_ex", "EVP_EncryptUpdate", "SM4-ECB", "SM4-CBC",
    };
    for (int i = 0; i < 9; i++)
        if ((p[i] = address_of(addresses, names[i])) == NULL) return NULL;
    free_contexts();
    ossl.set_key = (des_set_key_fn)p[0];
    ossl.cbc_cksum = (des_cbc_cksum_fn)p[1];
    ossl.ede3_cbc = (des_ede3_cbc_fn)p[2];
    ossl.ctx_new = (ctx_new_fn)p[3];
    ossl.ctx_free = (ctx_free_fn)p[4];
    ossl.init = (encrypt_init_fn)p[5];
    ossl.update = (encrypt_update_fn)p[6];
    ossl.sm4_ecb = ossl.ctx_new();
    ossl.sm4_cbc = ossl.ctx_new();
    if (ossl.sm4_ecb == NULL || ossl.sm4_cbc == NULL ||
        !ossl.init(ossl.sm4_ecb, (const EVP_CIPHER *)p[7], NULL, ZEROS, NULL) ||
        !ossl.init(ossl.sm4_cbc, (const EVP_CIPHER *)p[8], NULL, ZEROS, ZEROS)) {
        free_contexts();
        ossl.set_key = NULL;
        PyErr_SetString(PyExc_ValueError, "_tc_native.bind: the SM4 contexts could not be set up");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"verify", verify, METH_VARARGS, "Per tap 0 (TC and balance MAC verify), 1 (TC does not) or 2 (MAC does not)."},
    {"bind", bind, METH_O, "The libcrypto function and cipher addresses, by name."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_tc_native", "hsm.tc_batch's per-tap loop in C (optional).", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__tc_native(void) { return PyModule_Create(&module_def); }
