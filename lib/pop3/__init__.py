"""The POP3 engine: a state machine over a snapshot of one Maildir (no sockets inside)."""
