"""The switch: routes ISO 8583 requests by BIN to local issuers or remote switches (issue 5, item 4)."""
