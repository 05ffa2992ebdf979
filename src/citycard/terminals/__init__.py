"""Device programs: a kernel + a sector's rules + the links a terminal needs (acquirer, journal, uploader)."""
