"""The SMTP engine: a state machine fed lines and DATA chunks (no sockets inside)."""
