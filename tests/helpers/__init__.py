"""Helpers shared by the tests, one module per concern (fixtures live in conftest.py).

    waiting   wait_until: the one bounded poll
    ini       the test password and the one INI builder
    tls       the certificate made at test time and the contexts that trust it
    net       loopback, timeouts, free ports
    clients   raw SMTP and POP3 clients, smtplib/poplib shortcuts
    mail      messages as clients send them, stored messages and DSNs as they are read
    logs      the server's key=value log parsed into dicts
    cli       the project's root and its command line as a subprocess
    server    a real `serve` process, its config and what it leaves in data_dir
    outbound  a DNS server and sink SMTP servers for the outbound tests
"""
