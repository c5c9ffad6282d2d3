"""mailbox_appliance: a complete mail server for one small home server.

One module per concern; each opens with a line saying what it owns, and
imports only modules listed above it here, so dependencies flow one way:

    replies, errors, logfmt, logsink reply constants, typed exceptions, log lines and their writer
    wire, durable                    bytes on the wire; fsync primitives
    addresses, passwords             RFC 5321 addresses; hashes and SASL
    config, router                   the INI file; address resolution
    maildir, spool, bounce, intake   Maildirs; the outbound queue; DSNs; accepting a message
    tls, policy, services            SSL contexts; who may do what; what sessions share
    protocol                         what both protocol engines take and return
    smtp_session, pop3_session       the protocol engines (no sockets inside)
    submit, delivery                 the sendmail command's submission; the queue runner
    listeners, advice, daemon        sockets; check's warnings; the process
    cli                              the subcommands
"""
