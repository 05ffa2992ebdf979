"""The terminal kernel: PBOC contact and qPBOC steps, ODA, CVM, risk management, action analysis;
terminal parameters (AIDs, CA public keys, exception file) as data in ``citycard.kernel.params``."""
