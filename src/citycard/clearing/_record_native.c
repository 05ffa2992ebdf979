/* citycard.clearing._record_native: clearing.record.parse_fields_fast for the validators' usual
 * upload, in C (an optional extension; clearing.record falls back to Python without it).
 *
 * parse_canonical(upload) gives exactly what parse_fields_fast gives for an upload of the usual
 * shape — a dict of the ten upload fields (no transit), texts in ASCII, tap_at written
 * "YYYY-MM-DDTHH:MM:SS+00:00", field 55 in one of the configured layouts — and None for anything
 * else, good or bad: the Python parsers then read it (and name its problem). It never raises for
 * an upload. The layouts and constants come from clearing.record (configure), so the formats stay
 * data in one place; tests/clearing/test_record_native.py checks the two paths agree (hypothesis).
 *
 * canonical_json_part(records, fallback) writes the batch digest's canonical JSON of the usual
 * uploads (clearing.batch.digest_part, json.dumps's text to the byte) and asks fallback for others.
 *
 * partition_positions(uploads, buckets, groups) is clearing.parallel's partition by card: the parent
 * runs it over the whole batch before any worker can start, so it is the batch's serial head.
 *
 * Why C: the workers parse every tap, and in Python the checks cost ~10 µs a record (one third of
 * a worker's time); here they are well under one. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <stdint.h>
#include <string.h>

#define LAYOUTS_MAX 8
#define FIELD55_BYTES_MAX 255
#define AC_PARTS 10
#define AC_INPUT_BYTES_MAX 64
#define IAD_BYTES 19

typedef struct {
    Py_ssize_t size;                            /* bytes of the whole field 55 */
    unsigned char template[FIELD55_BYTES_MAX];  /* the tags and lengths, at their offsets */
    unsigned char fixed[FIELD55_BYTES_MAX];     /* 1 where template must match (tag, length) */
    Py_ssize_t tc, cid, iad, amount, atc, date, balance; /* value offsets; -1: absent */
    Py_ssize_t ac_offset[AC_PARTS], ac_length[AC_PARTS];
} Layout;

static Layout layouts[LAYOUTS_MAX];
static int layout_count = 0;
static long long amount_max = 0;  /* AMOUNT_FEN_MAX */
static int idd_type_ec = -1, cid_tc = -1, slack_days = -1, field55_hex_max = 0;

/* the upload's field names, interned once */
enum { F_PAN, F_PSN, F_TERMINAL, F_OPERATOR, F_ROUTE, F_VEHICLE, F_AMOUNT, F_AFTER, F_FIELD55, F_TAP_AT, F_COUNT };
static const char *field_names[F_COUNT] = {
    "pan", "psn", "terminal_id", "operator", "route", "vehicle", "amount_fen", "balance_fen_after",
    "field55", "tap_at",
};
static PyObject *field_keys[F_COUNT];

static int hex_value(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* An exact str in ASCII: its bytes and length, else NULL. */
static const unsigned char *ascii_of(PyObject *value, Py_ssize_t *length) {
    if (!PyUnicode_CheckExact(value) || !PyUnicode_IS_ASCII(value)) return NULL;
    *length = PyUnicode_GET_LENGTH(value);
    return PyUnicode_1BYTE_DATA(value);
}

/* record.PAN_RE [0-9]{12,19}, PSN_RE [0-9]{2}: digits only, between low and high of them */
static int all_digits(PyObject *value, Py_ssize_t low, Py_ssize_t high) {
    Py_ssize_t n;
    const unsigned char *s = ascii_of(value, &n);
    if (s == NULL || n < low || n > high) return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9') return 0;
    return 1;
}

/* record.TEXT_RE [A-Za-z0-9_.\-]{1,32} */
static int plain_text(PyObject *value) {
    Py_ssize_t n;
    const unsigned char *s = ascii_of(value, &n);
    if (s == NULL || n < 1 || n > 32) return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '.' || c == '-'))
            return 0;
    }
    return 1;
}

/* An exact int 0…amount_max into *out. */
static int fen_of(PyObject *value, long long *out) {
    int overflow = 0;
    if (!PyLong_CheckExact(value)) return 0;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow || v < 0 || v > amount_max) {
        PyErr_Clear();
        return 0;
    }
    *out = v;
    return 1;
}

/* n12 BCD of 0…999 999 999 999 */
static void bcd12(long long value, unsigned char out[6]) {
    for (int i = 5; i >= 0; i--) {
        int low = (int)(value % 10);
        value /= 10;
        int high = (int)(value % 10);
        value /= 10;
        out[i] = (unsigned char)((high << 4) | low);
    }
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static long days_from_civil(long y, long m, long d) {
    y -= m <= 2;
    long era = (y >= 0 ? y : y - 399) / 400;
    long yoe = y - era * 400;
    long doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int days_in_month(int y, int m) {
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)) return 29;
    return days[m - 1];
}

static int two_digits(const unsigned char *s, int *out) {
    if (s[0] < '0' || s[0] > '9' || s[1] < '0' || s[1] > '9') return 0;
    *out = (s[0] - '0') * 10 + (s[1] - '0');
    return 1;
}

/* "YYYY-MM-DDTHH:MM:SS+00:00", a valid time: its fields; else 0. */
static int validators_time(PyObject *value, int f[6]) {
    Py_ssize_t n;
    const unsigned char *s = ascii_of(value, &n);
    int hi, lo;
    if (s == NULL || n != 25 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' ||
        s[16] != ':' || memcmp(s + 19, "+00:00", 6) != 0)
        return 0;
    if (!two_digits(s, &hi) || !two_digits(s + 2, &lo) || !two_digits(s + 5, &f[1]) ||
        !two_digits(s + 8, &f[2]) || !two_digits(s + 11, &f[3]) || !two_digits(s + 14, &f[4]) ||
        !two_digits(s + 17, &f[5]))
        return 0;
    f[0] = hi * 100 + lo;
    /* 9999: the Asia/Shanghai day of a time late on 9999-12-31 overflows Python's date; leave
       such a record to the Python parsers */
    if (f[0] < 1 || f[0] > 9998 || f[1] < 1 || f[1] > 12 || f[2] < 1 || f[2] > days_in_month(f[0], f[1]) ||
        f[3] > 23 || f[4] > 59 || f[5] > 59)
        return 0;
    return 1;
}

/* 9A (YYMMDD BCD, years 2000–2099) is a date within slack_days of the local day number. */
static int fits_date(const unsigned char *tag_9a, long local_day) {
    int parts[3];
    for (int i = 0; i < 3; i++) {
        int high = tag_9a[i] >> 4, low = tag_9a[i] & 0x0F;
        if (high > 9 || low > 9) return 0;
        parts[i] = high * 10 + low;
    }
    int year = 2000 + parts[0], month = parts[1], day = parts[2];
    if (month < 1 || month > 12 || day < 1 || day > days_in_month(year, month)) return 0;
    long distance = local_day - days_from_civil(year, month, day);
    return distance >= -slack_days && distance <= slack_days;
}

static PyObject *parse_canonical(PyObject *module, PyObject *upload) {
    (void)module;
    PyObject *v[F_COUNT];
    if (layout_count == 0) {
        PyErr_SetString(PyExc_RuntimeError, "_record_native: configure() was not called");
        return NULL;
    }
    if (!PyDict_CheckExact(upload) || PyDict_GET_SIZE(upload) != F_COUNT) Py_RETURN_NONE;
    for (int i = 0; i < F_COUNT; i++) {
        v[i] = PyDict_GetItemWithError(upload, field_keys[i]);  /* borrowed */
        if (v[i] == NULL) {
            if (PyErr_Occurred()) PyErr_Clear();
            Py_RETURN_NONE;
        }
    }
    long long amount, after;
    if (!all_digits(v[F_PAN], 12, 19) || !all_digits(v[F_PSN], 2, 2) || !plain_text(v[F_TERMINAL]) ||
        !plain_text(v[F_OPERATOR]) || !plain_text(v[F_ROUTE]) || !plain_text(v[F_VEHICLE]) ||
        !fen_of(v[F_AMOUNT], &amount) || !fen_of(v[F_AFTER], &after))
        Py_RETURN_NONE;
    int when[6];
    if (!validators_time(v[F_TAP_AT], when)) Py_RETURN_NONE;

    Py_ssize_t hex_length;
    const unsigned char *hex = ascii_of(v[F_FIELD55], &hex_length);
    if (hex == NULL || hex_length == 0 || hex_length > field55_hex_max || hex_length % 2) Py_RETURN_NONE;
    unsigned char raw[FIELD55_BYTES_MAX];
    Py_ssize_t size = hex_length / 2;
    for (Py_ssize_t i = 0; i < size; i++) {
        int high = hex_value(hex[2 * i]), low = hex_value(hex[2 * i + 1]);
        if (high < 0 || low < 0) Py_RETURN_NONE;
        raw[i] = (unsigned char)((high << 4) | low);
    }
    const Layout *layout = NULL;
    for (int k = 0; k < layout_count && layout == NULL; k++) {
        const Layout *candidate = &layouts[k];
        if (candidate->size != size) continue;
        Py_ssize_t i = 0;
        while (i < size && (!candidate->fixed[i] || raw[i] == candidate->template[i])) i++;
        if (i == size) layout = candidate;
    }
    if (layout == NULL) Py_RETURN_NONE;

    const unsigned char *iad = raw + layout->iad;
    unsigned char fare[6], balance[6];
    bcd12(amount, fare);
    bcd12(after, balance);
    if (memcmp(raw + layout->amount, fare, 6) != 0 || iad[0] != 0x07 || iad[3] != 0x03 || iad[8] != 0x0A ||
        iad[9] != idd_type_ec || after >= 10000000000LL || memcmp(iad + 10, balance + 1, 5) != 0 ||
        (layout->cid >= 0 && (raw[layout->cid] & 0xC0) != cid_tc) ||
        (layout->balance >= 0 && memcmp(raw + layout->balance, balance, 6) != 0))
        Py_RETURN_NONE;
    /* the Asia/Shanghai day (UTC+8, no DST since 1991) of tap_at */
    long local_day = days_from_civil(when[0], when[1], when[2]) + (when[3] + 8 >= 24 ? 1 : 0);
    if (!fits_date(raw + layout->date, local_day)) Py_RETURN_NONE;

    unsigned char ac_input[AC_INPUT_BYTES_MAX];
    Py_ssize_t ac_size = 0;
    for (int i = 0; i < AC_PARTS; i++) {
        memcpy(ac_input + ac_size, raw + layout->ac_offset[i], (size_t)layout->ac_length[i]);
        ac_size += layout->ac_length[i];
    }
    ac_input[ac_size++] = 0x03;  /* the CVR field: its length, then the IAD's CVR bytes */
    memcpy(ac_input + ac_size, iad + 4, 3);
    ac_size += 3;

    PyObject *tap_at = PyDateTimeAPI->DateTime_FromDateAndTime(
        when[0], when[1], when[2], when[3], when[4], when[5], 0, PyDateTime_TimeZone_UTC,
        PyDateTimeAPI->DateTimeType);
    if (tap_at == NULL) {  /* cannot happen for the checked fields; leave it to Python */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    long atc = (raw[layout->atc] << 8) | raw[layout->atc + 1];
    /* the ClearingRecord fields in field order (record.parse_fields_fast) */
    return Py_BuildValue(
        "(OOlLLLy#y#y#OOOONy#O)", v[F_PAN], v[F_PSN], atc, amount, amount + after, after,
        (const char *)(raw + layout->tc), (Py_ssize_t)8, (const char *)ac_input, ac_size, (const char *)iad,
        (Py_ssize_t)IAD_BYTES, v[F_TERMINAL], v[F_OPERATOR], v[F_ROUTE], v[F_VEHICLE], tap_at,
        (const char *)raw, size, Py_None);
}

/* --- the batch digest's canonical JSON (clearing.batch.digest_part) ------------------------------- */

typedef struct {
    char *data;
    Py_ssize_t size, capacity;
} Buffer;

static int reserve(Buffer *buffer, Py_ssize_t more) {
    if (buffer->size + more <= buffer->capacity) return 1;
    Py_ssize_t capacity = buffer->capacity ? buffer->capacity : 4096;
    while (capacity < buffer->size + more) capacity *= 2;
    char *data = PyMem_Realloc(buffer->data, (size_t)capacity);
    if (data == NULL) {
        PyErr_NoMemory();
        return 0;
    }
    buffer->data = data;
    buffer->capacity = capacity;
    return 1;
}

static int append(Buffer *buffer, const char *text, Py_ssize_t length) {
    if (!reserve(buffer, length)) return 0;
    memcpy(buffer->data + buffer->size, text, (size_t)length);
    buffer->size += length;
    return 1;
}

/* A text JSON writes as it is: an exact str of printable ASCII without '"' or a backslash. */
static const unsigned char *json_plain(PyObject *value, Py_ssize_t *length) {
    const unsigned char *s = ascii_of(value, length);
    if (s == NULL) return NULL;
    for (Py_ssize_t i = 0; i < *length; i++)
        if (s[i] < 0x20 || s[i] > 0x7E || s[i] == '"' || s[i] == '\\') return NULL;
    return s;
}

/* The fields in sorted order, as json.dumps(sort_keys=True) writes them; ints first (amounts). */
static const int json_order[F_COUNT] = {F_AMOUNT, F_AFTER, F_FIELD55, F_OPERATOR, F_PAN, F_PSN, F_ROUTE, F_TAP_AT, F_TERMINAL, F_VEHICLE};

/* json.dumps(upload, sort_keys=True, separators=(",", ":")) of an upload of the usual shape (the
 * ten fields, exact int amounts that fit 64 bits, plain texts) appended; 0 (nothing appended) for
 * any other record, -1 with an exception set. */
static int upload_json(Buffer *buffer, PyObject *record) {
    PyObject *v[F_COUNT];
    if (!PyDict_CheckExact(record) || PyDict_GET_SIZE(record) != F_COUNT) return 0;
    for (int i = 0; i < F_COUNT; i++) {
        v[i] = PyDict_GetItemWithError(record, field_keys[i]);
        if (v[i] == NULL) {
            if (PyErr_Occurred()) PyErr_Clear();
            return 0;
        }
    }
    char numbers[2][24];
    int number_length[2];
    for (int k = 0; k < 2; k++) {
        int overflow = 0;
        PyObject *value = v[json_order[k]];
        if (!PyLong_CheckExact(value)) return 0;
        long long n = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow) return 0;
        number_length[k] = snprintf(numbers[k], sizeof numbers[k], "%lld", n);
    }
    const unsigned char *texts[F_COUNT];
    Py_ssize_t lengths[F_COUNT], total = 2 + number_length[0] + number_length[1];
    for (int k = 2; k < F_COUNT; k++) {
        texts[k] = json_plain(v[json_order[k]], &lengths[k]);
        if (texts[k] == NULL) return 0;
        total += lengths[k] + 2;
    }
    static const char *names[F_COUNT] = {
        "{\"amount_fen\":", ",\"balance_fen_after\":", ",\"field55\":", ",\"operator\":", ",\"pan\":", ",\"psn\":",
        ",\"route\":", ",\"tap_at\":", ",\"terminal_id\":", ",\"vehicle\":",
    };
    for (int k = 0; k < F_COUNT; k++) total += (Py_ssize_t)strlen(names[k]);
    if (!reserve(buffer, total + 1)) return -1;
    for (int k = 0; k < F_COUNT; k++) {
        append(buffer, names[k], (Py_ssize_t)strlen(names[k]));
        if (k < 2) {
            append(buffer, numbers[k], number_length[k]);
        } else {
            append(buffer, "\"", 1);
            append(buffer, (const char *)texts[k], lengths[k]);
            append(buffer, "\"", 1);
        }
    }
    append(buffer, "}", 1);
    return 1;
}

/* canonical_json_part(records, fallback) -> bytes: clearing.batch.digest_part — the records'
 * canonical JSON joined by ",", the usual uploads written here, any other by fallback(record) (a
 * str of ASCII, as json.dumps writes). */
static PyObject *canonical_json_part(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *records, *fallback;
    if (!PyArg_ParseTuple(args, "OO", &records, &fallback)) return NULL;
    PyObject *seq = PySequence_Fast(records, "records must be a sequence");
    if (seq == NULL) return NULL;
    Buffer buffer = {NULL, 0, 0};
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < count; i++) {
        if (i > 0 && !append(&buffer, ",", 1)) goto fail;
        int done = upload_json(&buffer, PySequence_Fast_GET_ITEM(seq, i));
        if (done < 0) goto fail;
        if (done == 0) {
            PyObject *text = PyObject_CallOneArg(fallback, PySequence_Fast_GET_ITEM(seq, i));
            if (text == NULL) goto fail;
            Py_ssize_t length;
            const char *utf8 = PyUnicode_Check(text) ? PyUnicode_AsUTF8AndSize(text, &length) : NULL;
            if (utf8 == NULL) {
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "fallback must return a str");
                Py_DECREF(text);
                goto fail;
            }
            int ok = append(&buffer, utf8, length);
            Py_DECREF(text);
            if (!ok) goto fail;
        }
    }
    Py_DECREF(seq);
    PyObject *out = PyBytes_FromStringAndSize(buffer.data ? buffer.data : "", buffer.size);
    PyMem_Free(buffer.data);
    return out;
fail:
    Py_DECREF(seq);
    PyMem_Free(buffer.data);
    return NULL;
}

/* CRC-32 (ISO-HDLC, as zlib.crc32): the card partition's hash, table-driven */
static uint32_t crc_table[256];

static void crc_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
}

static uint32_t crc_update(uint32_t crc, const unsigned char *s, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) crc = crc_table[(crc ^ s[i]) & 0xFF] ^ (crc >> 8);
    return crc;
}

#define PARTITION_GROUPS_MAX 65536

/* partition_positions(uploads, buckets, groups) -> list of lists, or None: clearing.parallel's card
 * partition — each position i goes to the list groups[crc32(f"{pan}:{psn}") % buckets] (groups: a
 * sequence of `buckets` list indices), in ascending order. None when any upload is not an exact
 * dict with pan and psn as exact ASCII str: the Python partition then places every record. */
static PyObject *partition_positions(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *uploads, *groups_arg;
    Py_ssize_t buckets;
    if (!PyArg_ParseTuple(args, "OnO", &uploads, &buckets, &groups_arg)) return NULL;
    if (buckets < 1 || buckets > PARTITION_GROUPS_MAX) {
        PyErr_Format(PyExc_ValueError, "partition_positions: buckets must be 1 to %d, got %zd",
                     PARTITION_GROUPS_MAX, buckets);
        return NULL;
    }
    PyObject *groups_seq = PySequence_Fast(groups_arg, "groups must be a sequence");
    if (groups_seq == NULL) return NULL;
    if (PySequence_Fast_GET_SIZE(groups_seq) != buckets) {
        Py_DECREF(groups_seq);
        PyErr_SetString(PyExc_ValueError, "partition_positions: one group index per bucket");
        return NULL;
    }
    PyObject *seq = NULL, *out = NULL;
    Py_ssize_t *group_of = PyMem_New(Py_ssize_t, (size_t)buckets);
    if (group_of == NULL) {
        Py_DECREF(groups_seq);
        return PyErr_NoMemory();
    }
    Py_ssize_t lists = 0;
    for (Py_ssize_t b = 0; b < buckets; b++) {
        Py_ssize_t g = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(groups_seq, b));
        if (g == -1 && PyErr_Occurred()) goto done;
        if (g < 0 || g >= buckets) {
            PyErr_Format(PyExc_ValueError, "partition_positions: group %zd out of 0 to %zd", g, buckets - 1);
            goto done;
        }
        group_of[b] = g;
        if (g + 1 > lists) lists = g + 1;
    }
    seq = PySequence_Fast(uploads, "uploads must be a sequence");
    if (seq == NULL) goto done;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    /* first the buckets, so that an odd record leaves before any list is built */
    uint32_t *bucket_of = PyMem_New(uint32_t, (size_t)(count > 0 ? count : 1));
    if (bucket_of == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *upload = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *pan, *psn;
        const unsigned char *pan_s, *psn_s;
        Py_ssize_t pan_n, psn_n;
        if (!PyDict_CheckExact(upload) || (pan = PyDict_GetItemWithError(upload, field_keys[F_PAN])) == NULL ||
            (psn = PyDict_GetItemWithError(upload, field_keys[F_PSN])) == NULL ||
            (pan_s = ascii_of(pan, &pan_n)) == NULL || (psn_s = ascii_of(psn, &psn_n)) == NULL) {
            PyMem_Free(bucket_of);
            if (PyErr_Occurred()) goto done;
            out = Py_NewRef(Py_None);
            goto done;
        }
        uint32_t crc = crc_update(0xFFFFFFFFu, pan_s, pan_n);
        crc = crc_update(crc, (const unsigned char *)":", 1);
        crc = crc_update(crc, psn_s, psn_n) ^ 0xFFFFFFFFu;
        bucket_of[i] = (uint32_t)group_of[crc % (uint32_t)buckets];
    }
    out = PyList_New(lists);
    if (out == NULL) {
        PyMem_Free(bucket_of);
        goto done;
    }
    for (Py_ssize_t g = 0; g < lists; g++) {
        PyObject *list = PyList_New(0);
        if (list == NULL) break;
        PyList_SET_ITEM(out, g, list);
    }
    for (Py_ssize_t i = 0; i < count && !PyErr_Occurred(); i++) {
        PyObject *position = PyLong_FromSsize_t(i);
        if (position == NULL) break;
        int failed = PyList_Append(PyList_GET_ITEM(out, bucket_of[i]), position);
        Py_DECREF(position);
        if (failed) break;
    }
    PyMem_Free(bucket_of);
    if (PyErr_Occurred()) Py_CLEAR(out);
done:
    PyMem_Free(group_of);
    Py_DECREF(groups_seq);
    Py_XDECREF(seq);
    return out;
}

static int offset_of(PyObject *item, Py_ssize_t *out, Py_ssize_t size, Py_ssize_t length) {
    Py_ssize_t value = PyLong_AsSsize_t(item);
    if (value == -1 && PyErr_Occurred()) return 0;
    if (value < -1 || (value >= 0 && value + length > size)) {
        PyErr_Format(PyExc_ValueError, "_record_native: offset %zd out of the layout", value);
        return 0;
    }
    *out = value;
    return 1;
}

/* configure(layouts, amount_fen_max, idd_type_ec, cid_tc, slack_days, field55_hex_max): layouts is a
 * sequence of (template bytes, fixed bytes, tc, cid, iad, amount, atc, date, balance,
 * ((offset, length) × 10)) — clearing.record._native_layouts. */
static PyObject *configure(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *specs;
    long long amount;
    int idd, cid, slack, hex_max;
    if (!PyArg_ParseTuple(args, "OLiiii", &specs, &amount, &idd, &cid, &slack, &hex_max)) return NULL;
    PyObject *seq = PySequence_Fast(specs, "layouts must be a sequence");
    if (seq == NULL) return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    if (count < 1 || count > LAYOUTS_MAX || hex_max < 2 || hex_max > 2 * FIELD55_BYTES_MAX) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "_record_native: 1…8 layouts and field 55 of 1…255 bytes");
        return NULL;
    }
    Layout parsed[LAYOUTS_MAX];
    for (Py_ssize_t k = 0; k < count; k++) {
        Layout *layout = &parsed[k];
        const char *template, *fixed;
        Py_ssize_t size, fixed_size;
        PyObject *tc, *cidx, *iad, *am, *atc, *date, *bal, *parts;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, k), "y#y#OOOOOOOO", &template, &size, &fixed,
                              &fixed_size, &tc, &cidx, &iad, &am, &atc, &date, &bal, &parts)) {
            Py_DECREF(seq);
            return NULL;
        }
        if (size != fixed_size || size < 1 || size > FIELD55_BYTES_MAX) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "_record_native: template and fixed of one size, 1…255");
            return NULL;
        }
        layout->size = size;
        memcpy(layout->template, template, (size_t)size);
        memcpy(layout->fixed, fixed, (size_t)size);
        if (!offset_of(tc, &layout->tc, size, 8) || !offset_of(cidx, &layout->cid, size, 1) ||
            !offset_of(iad, &layout->iad, size, IAD_BYTES) || !offset_of(am, &layout->amount, size, 6) ||
            !offset_of(atc, &layout->atc, size, 2) || !offset_of(date, &layout->date, size, 3) ||
            !offset_of(bal, &layout->balance, size, 6) || layout->tc < 0 || layout->iad < 0 ||
            layout->amount < 0 || layout->atc < 0 || layout->date < 0) {
            Py_DECREF(seq);
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "_record_native: a required offset is -1");
            return NULL;
        }
        PyObject *pairs = PySequence_Fast(parts, "AC input parts must be a sequence");
        if (pairs == NULL) {
            Py_DECREF(seq);
            return NULL;
        }
        Py_ssize_t total = 0;
        int ok = PySequence_Fast_GET_SIZE(pairs) == AC_PARTS;
        for (Py_ssize_t i = 0; ok && i < AC_PARTS; i++) {
            Py_ssize_t offset, length;
            ok = PyArg_ParseTuple(PySequence_Fast_GET_ITEM(pairs, i), "nn", &offset, &length) && offset >= 0 &&
                 length > 0 && offset + length <= size;
            layout->ac_offset[i] = offset;
            layout->ac_length[i] = length;
            total += length;
        }
        Py_DECREF(pairs);
        if (!ok || total + 4 > AC_INPUT_BYTES_MAX) {
            Py_DECREF(seq);
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "_record_native: bad AC input parts");
            return NULL;
        }
    }
    Py_DECREF(seq);
    memcpy(layouts, parsed, sizeof(Layout) * (size_t)count);
    layout_count = (int)count;
    amount_max = amount;
    idd_type_ec = idd;
    cid_tc = cid;
    slack_days = slack;
    field55_hex_max = hex_max;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"parse_canonical", parse_canonical, METH_O,
     "The ClearingRecord fields of a usual upload (clearing.record.parse_fields_fast), else None."},
    {"configure", configure, METH_VARARGS, "Set the field-55 layouts and the limits (clearing.record)."},
    {"partition_positions", partition_positions, METH_VARARGS,
     "clearing.parallel's card partition: positions by CRC-32 of PAN:PSN, else None."},
    {"canonical_json_part", canonical_json_part, METH_VARARGS,
     "clearing.batch.digest_part: the records' canonical JSON joined by commas, others by fallback."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_record_native", "clearing.record's fast path in C (optional).", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__record_native(void) {
    crc_init();
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) return NULL;
    for (int i = 0; i < F_COUNT; i++) {
        field_keys[i] = PyUnicode_InternFromString(field_names[i]);
        if (field_keys[i] == NULL) return NULL;
    }
    return PyModule_Create(&module_def);
}
