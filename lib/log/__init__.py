"""The key=value event format and where the lines go (file, syslog, stderr)."""
