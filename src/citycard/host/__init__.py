"""Bank-side hosts: the issuer (authorisation, ARPC, scripts, EC load) and the switch (routing by BIN)."""
