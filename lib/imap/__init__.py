"""The IMAP engine (RFC 9051 / RFC 3501): parser, session state machine, FETCH, SEARCH."""
