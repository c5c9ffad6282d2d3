"""mailbox_appliance: a complete mail server for one small home server.

The code is one package of subpackages, one concern each. A subpackage
imports only from itself and from those listed before it in LAYERS, so
dependencies flow one way (tests/unit/test_layering.py enforces it, also
for imports inside functions):

    core      replies, typed errors, wire codecs, addresses, passwords, durable writes
    config    the INI file -> frozen Config; the address router; TLS contexts
    log       the key=value event format and where lines go
    store     Maildirs, the outbound queue on disk, the intake that commits to both
    checks    who a client is and what it may do: trust, logins, caps, back-pressure, filter
    session   what every protocol engine takes and returns; the Runtime it is given
    outbound  next hop, the SMTP client, the queue runner, DSNs, DKIM signing, SRS
    smtp      the SMTP engine (no sockets inside)
    pop3      the POP3 engine (no sockets inside)
    imap      the IMAP engine (no sockets inside): parser, session, FETCH, SEARCH
    server    the only socket code: listeners, line reading, TLS wrapping; the daemon
    cli       the subcommands
"""

# outbound comes before the engines: the SMTP engine signs the household's mail
# (DKIM) and rewrites forwards (SRS) before it queues them.
LAYERS = ("core", "config", "log", "store", "checks", "session", "outbound", "smtp", "pop3",
          "imap", "server", "cli")
