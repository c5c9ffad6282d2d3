"""The only socket code (listeners, line reading, TLS wrapping) and the daemon
(bind, privileges, signals, reload)."""
