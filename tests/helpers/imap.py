"""IMAP clients for the server tests: imaplib logged in, a raw line client for
what imaplib cannot do (IDLE, pipelined STARTTLS, slow bytes), and the configs
of the real clients (mbsync, offlineimap3)."""

from __future__ import annotations

import hashlib
import imaplib
import re
import ssl
from pathlib import Path

from .clients import RawConnection
from .ini import HOSTNAME, PASSWORD
from .net import HOST, TIMEOUT

RESPONSE_CODE = re.compile(rb"\[([A-Z]+) ([^\]]*)\]")


def imap_client(port: int, context: ssl.SSLContext | None = None) -> imaplib.IMAP4:
    """imaplib connected to `port`; with `context`, TLS from the first byte (imaps)."""
    if context is not None:
        return imaplib.IMAP4_SSL(HOST, port, ssl_context=context, timeout=TIMEOUT)
    return imaplib.IMAP4(HOST, port, timeout=TIMEOUT)


def imap_login(port: int, user: str = "alice", context: ssl.SSLContext | None = None,
               password: str = PASSWORD) -> imaplib.IMAP4:
    """imaplib logged in (fails unless the server said OK)."""
    client = imap_client(port, context)
    status, data = client.login(user, password)
    assert status == "OK", data
    return client


def ok(answer: tuple[str, list]) -> list:
    """The data of an imaplib answer that must be OK."""
    status, data = answer
    assert status == "OK", (status, data)
    return data


def response_code(text: bytes, name: bytes) -> list[bytes]:
    """The arguments of the response code `name` ([COPYUID 5 1:2 3:4]) in `text`."""
    for found, arguments in RESPONSE_CODE.findall(text):
        if found == name:
            return arguments.split()
    raise AssertionError(f"no [{name.decode()} ...] in {text!r}")


class RawImap(RawConnection):
    """IMAP line by line: commands out as given, lines in."""

    def __init__(self, port: int, timeout: float = TIMEOUT):
        super().__init__(port, timeout=timeout)

    def line(self) -> bytes | None:
        """The next line with CRLF; None when the server closed first."""
        return self.read_until(b"\r\n")

    def until_tagged(self, tag: bytes) -> list[bytes]:
        """Every line up to and including the tagged completion of `tag`."""
        lines = []
        while True:
            line = self.line()
            assert line is not None, f"closed before {tag!r} completed: {lines!r}"
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def command(self, tag: bytes, text: bytes) -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        return self.until_tagged(tag)

    def login(self, user: str = "alice") -> None:
        greeting = self.line()
        assert greeting is not None and greeting.startswith(b"* OK"), greeting
        answer = self.command(b"l", f'LOGIN {user} "{PASSWORD}"'.encode())
        assert answer[-1].startswith(b"l OK"), answer


# ---------------------------------------------------------------- configs of real clients

def mbsync_config(folder: Path, port: int, cert: Path) -> Path:
    """An mbsync config syncing every folder of alice both ways into folder/local.
    isync 1.4 checks only DNS names against `Host`, and the test server is
    127.0.0.1: openssl carries the TLS instead (verifying the certificate and
    the name mail.example.org), as a Tunnel, which mbsync trusts with a password."""
    local = folder / "local"
    local.mkdir(parents=True, exist_ok=True)
    tunnel = (f"openssl s_client -quiet -verify_return_error -CAfile {cert} "
              f"-verify_hostname {HOSTNAME} -connect {HOST}:{port}")
    path = folder / "mbsyncrc"
    path.write_text(f"""IMAPAccount server
Tunnel "{tunnel}"
User alice
Pass "{PASSWORD}"
SSLType None

IMAPStore remote
Account server

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel all
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
""")
    return path


def offlineimap_config(folder: Path, port: int, cert: Path) -> Path:
    """An offlineimap3 config for alice over imaps. It matches only DNS names to
    the host it connects to, so the certificate is pinned by its fingerprint."""
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    path = folder / "offlineimaprc"
    path.write_text(f"""[general]
accounts = test
metadata = {folder / "metadata"}

[Account test]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {folder / "mail"}

[Repository remote]
type = IMAP
remotehost = {HOST}
remoteport = {port}
remoteuser = alice
remotepass = {PASSWORD}
ssl = yes
cert_fingerprint = {hashlib.sha512(der).hexdigest()}
""")
    return path
