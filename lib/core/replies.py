"""Every SMTP, POP3 and IMAP reply the server sends, as named constants.

Code raises `Reject(RELAY_DENIED)`; tests assert against the same constants,
so a grep for a reply finds every place that can send it. Enhanced status
codes (RFC 3463) go on every SMTP reply except the greeting and the EHLO/HELO
answer (RFC 2034 section 3).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property


@dataclass(frozen=True)
class Reply:
    code: int
    enhanced: str | None
    text: str

    def fill(self, **values) -> Reply:
        """The reply with its {placeholders} filled in."""
        return replace(self, text=self.text.format(**values))

    def lines(self) -> list[str]:
        prefix = f"{self.enhanced} " if self.enhanced else ""
        texts = self.text.split("\n") or [""]
        last = len(texts) - 1
        return [f"{self.code}{'-' if i < last else ' '}{prefix}{t}" for i, t in enumerate(texts)]

    def to_bytes(self) -> bytes:
        return self.wire

    @cached_property
    def wire(self) -> bytes:
        """The reply as sent; computed once per Reply (most are module constants)."""
        return "".join(line + "\r\n" for line in self.lines()).encode("utf-8", "replace")

    def __str__(self) -> str:
        return " / ".join(self.lines())


# ---------------------------------------------------------------- SMTP: 2xx / 3xx

GREETING = Reply(220, None, "{host} ESMTP mailbox_appliance")
BYE = Reply(221, "2.0.0", "Bye")
OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
RESET_OK = Reply(250, "2.0.0", "Reset OK")
ACCEPTED = Reply(250, "2.0.0", "OK: queued as {id}")
HELP = Reply(214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP "
                           "STARTTLS AUTH; see RFC 5321")
CANNOT_VRFY = Reply(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery")
READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")
START_DATA = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_CHALLENGE = Reply(334, None, "{challenge}")
HELO_OK = Reply(250, None, "{host}")
EHLO_OK = Reply(250, None, "{host} Hello {name} [{ip}]\n{extensions}")   # one keyword a line

# ---------------------------------------------------------------- SMTP: 4xx

SHUTTING_DOWN = Reply(421, "4.3.2", "{host} Service shutting down, closing connection")
TIMEOUT = Reply(421, "4.4.2", "{host} Timeout: closing connection")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "{host} Too many connections, try again later")
TOO_MANY_FROM_YOU = Reply(421, "4.7.0", "{host} Too many connections from your address")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "{host} Too many errors, closing connection")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
FILTER_TEMPFAIL = Reply(451, "4.7.1", "Message could not be checked, try again later")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
AUTH_LOCKED = Reply(454, "4.7.0", "Too many failed logins from your address, try again later")

# ---------------------------------------------------------------- SMTP: 5xx

UNKNOWN_COMMAND = Reply(500, "5.5.2", "Command not recognised")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
NUL_IN_COMMAND = Reply(500, "5.5.2", "Syntax error: NUL character in command")
SYNTAX_ERROR = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
HELLO_SYNTAX = Reply(501, "5.5.4", "{verb} needs one argument: your domain or address literal")
TAKES_NO_ARGUMENT = Reply(501, "5.5.4", "{verb} takes no argument")
VRFY_SYNTAX = Reply(501, "5.5.4", "VRFY needs an argument")
AUTH_SYNTAX = Reply(501, "5.5.4", "AUTH needs a mechanism")
MAIL_SYNTAX = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
RCPT_SYNTAX = Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
BAD_PARAMETER = Reply(501, "5.5.4", "Bad parameter {item}")
PARAMETER_TWICE = Reply(501, "5.5.4", "Parameter {key} given twice")
SIZE_SYNTAX = Reply(501, "5.5.4", "SIZE needs a number")
SMTPUTF8_SYNTAX = Reply(501, "5.5.4", "SMTPUTF8 takes no value")
BAD_ADDRESS_SYNTAX = Reply(501, "5.1.3", "Bad address syntax: {detail}")
AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")
AUTH_BAD_RESPONSE = Reply(501, "5.5.2", "Cannot decode the authentication response: {detail}")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands: {detail}")
UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognised authentication mechanism")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
TLS_REQUIRED = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
ENCRYPTION_REQUIRED = Reply(538, "5.7.11",
                            "Encryption required for requested authentication mechanism")
NO_SUCH_USER = Reply(550, "5.1.1", "No such user here")
FILTER_REJECTED = Reply(550, "5.7.1", "Message rejected by content filter")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed limit")
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address rejected: not owned by user {user}")
NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 extension")
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")
# a client that talked before the greeting or pipelined where RFC 2920 forbids it (Postfix's words)
PROTOCOL_SYNC = Reply(554, "5.5.0", "Error: SMTP protocol synchronization")
TOO_MANY_HOPS = Reply(554, "5.4.6", "Too many hops: mail loop detected")
DATA_LINE_TOO_LONG = Reply(554, "5.6.0", "Message has a line longer than 998 characters "
                                         "(RFC 5322 2.1.1)")
HTTP_REFUSED = Reply(221, "2.7.0", "This is an SMTP server, not a web proxy")
UNSUPPORTED_PARAMETER = Reply(555, "5.5.4", "Unsupported parameter: {detail}")

# ---------------------------------------------------------------- screening strangers (DESIGN 7.1)

DNSBL_LISTED = Reply(554, "5.7.1", "Service unavailable; client [{ip}] blocked using {zone}{why}")
SPF_FAILED = Reply(550, "5.7.23", "SPF check failed: {detail}")              # RFC 7372
SPF_TEMPERROR = Reply(451, "4.7.24", "SPF check could not be completed: {detail}")
DMARC_REJECTED = Reply(550, "5.7.1", "Rejected by the DMARC policy of {domain}")
GREYLISTED = Reply(451, "4.7.1", "Greylisted: please try again in {seconds} seconds")
SPAM_REJECTED = Reply(550, "5.7.1", "Message rejected as spam")
SPAM_DEFERRED = Reply(451, "4.7.1", "Message deferred by the spam filter, try again later")
VIRUS_FOUND = Reply(554, "5.7.1", "Message rejected: virus found ({virus})")
SCANNER_TEMPFAIL = Reply(451, "4.7.1", "Message could not be scanned, try again later")


# ---------------------------------------------------------------- POP3

@dataclass(frozen=True)
class PopReply:
    ok: bool
    text: str
    code: str | None = None       # RFC 2449 response code, e.g. "IN-USE"

    def fill(self, **values) -> PopReply:
        return replace(self, text=self.text.format(**values))

    def to_bytes(self) -> bytes:
        status = "+OK" if self.ok else "-ERR"
        code = f" [{self.code}]" if self.code else ""
        text = f" {self.text}" if self.text else ""
        return f"{status}{code}{text}\r\n".encode("utf-8", "replace")

    def __str__(self) -> str:
        return self.to_bytes().decode().rstrip()


@dataclass(frozen=True)
class PopContinue:
    """A SASL continuation in POP3 (RFC 5034): "+ " and a base64 challenge."""
    challenge: str = ""

    def to_bytes(self) -> bytes:
        return f"+ {self.challenge}\r\n".encode("ascii")

    def __str__(self) -> str:
        return f"+ {self.challenge}"


# ---------------------------------------------------------------- POP3 replies (RFC 1939)
# Response codes in brackets: RFC 2449 8, RFC 3206.

def _pop_ok(text: str) -> PopReply:
    return PopReply(True, text)


def _pop_err(text: str, code: str | None = None) -> PopReply:
    return PopReply(False, text, code)


POP_GREETING = _pop_ok("POP3 server ready")
POP_BYE = _pop_ok("Bye")
POP_UPDATED = _pop_ok("Bye ({deleted} deleted, {left} left)")
POP_CAPA = _pop_ok("Capability list follows")
POP_TLS_BEGIN = _pop_ok("Begin TLS negotiation")
POP_SEND_PASSWORD = _pop_ok("Send the password")          # the same answer for every name
POP_SASL_METHODS = _pop_ok("Methods follow")
POP_LOGGED_IN = _pop_ok("{mailbox} has {count} messages ({size} octets)")
POP_STAT = _pop_ok("{count} {size}")
POP_LIST = _pop_ok("{count} messages ({size} octets)")
POP_UIDL = _pop_ok("Unique-ID listing follows")
POP_SCAN_LINE = _pop_ok("{number} {value}")      # LIST n / UIDL n: the message's size or uid
POP_RETR = _pop_ok("{size} octets")
POP_TOP = _pop_ok("Top of message follows")
POP_MARKED = _pop_ok("Message {number} marked for deletion")
POP_RESET = _pop_ok("Maildrop has {count} messages ({size} octets)")
POP_NOOP = _pop_ok("")

POP_NO_SUCH_MESSAGE = _pop_err("No such message")
POP_ALREADY_DELETED = _pop_err("Message already deleted")
POP_NUMBER_REQUIRED = _pop_err("Message number required")
POP_TOP_SYNTAX = _pop_err("TOP needs a message number and a line count")
POP_UNKNOWN_COMMAND = _pop_err("Unknown command")
POP_WRONG_STATE = _pop_err("Command not valid in this state")
POP_NUL_IN_COMMAND = _pop_err("NUL character in command")
POP_USER_NEEDS_NAME = _pop_err("USER needs a name")
POP_USER_FIRST = _pop_err("USER first")
POP_AUTH_FAILED = _pop_err("Authentication failed", "AUTH")
POP_AUTH_LOCKED = _pop_err("Too many failed logins from your address, try again later",
                           "SYS/TEMP")
POP_IN_USE = _pop_err("Mailbox is in use by another session", "IN-USE")
POP_PLAINTEXT_REFUSED = _pop_err("Plaintext authentication is not allowed without TLS: use STLS",
                                 "AUTH")
POP_SYS_TEMP = _pop_err("Temporary server error, try again later", "SYS/TEMP")
POP_VANISHED = _pop_err("Message vanished from the mailbox", "SYS/TEMP")
POP_LINE_TOO_LONG = _pop_err("Line too long")
POP_TOO_MANY_ERRORS = _pop_err("Too many errors, closing connection")
POP_TIMEOUT = _pop_err("Timeout, closing connection")
POP_SHUTTING_DOWN = _pop_err("Server shutting down, closing connection", "SYS/TEMP")
POP_AUTH_CANCELLED = _pop_err("Authentication cancelled")
POP_TLS_ACTIVE = _pop_err("TLS is already active")
POP_TLS_UNAVAILABLE = _pop_err("TLS is not available")
POP_UNKNOWN_MECHANISM = _pop_err("Unsupported authentication mechanism")
POP_BAD_CREDENTIALS = _pop_err("Cannot decode the credentials: {detail}")
POP_UPDATE_FAILED = _pop_err("Some deleted messages were not removed", "SYS/TEMP")


# ---------------------------------------------------------------- IMAP (RFC 9051 7.1)
# Status responses: `<tag> OK|NO|BAD [CODE] text`, or untagged (`*`) OK, NO,
# BAD, BYE. Response codes (the text in brackets) are RFC 9051 7.1 and RFC
# 5530; a code may carry {placeholders} like the text.

@dataclass(frozen=True)
class ImapReply:
    status: str                   # OK, NO, BAD, BYE, PREAUTH
    text: str
    code: str | None = None       # e.g. "TRYCREATE", "APPENDUID {validity} {uid}"
    tag: str = "*"

    def fill(self, **values) -> ImapReply:
        code = self.code.format(**values) if self.code else self.code
        return replace(self, text=self.text.format(**values), code=code)

    def tagged(self, tag: str) -> ImapReply:
        return replace(self, tag=tag)

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    def to_bytes(self) -> bytes:
        code = f" [{self.code}]" if self.code else ""
        return f"{self.tag} {self.status}{code} {self.text}\r\n".encode("utf-8", "replace")

    def __str__(self) -> str:
        return self.to_bytes().decode("utf-8", "replace").rstrip()


@dataclass(frozen=True)
class ImapData:
    """An untagged data response (`* 3 EXISTS`, `* LIST ...`), already in IMAP syntax."""
    data: bytes

    def to_bytes(self) -> bytes:
        return b"* " + self.data + b"\r\n"

    def __str__(self) -> str:
        return "* " + self.data.decode("utf-8", "replace")


@dataclass(frozen=True)
class ImapContinue:
    """A command continuation request: `+ text` (literal, SASL, IDLE)."""
    text: str = ""

    def to_bytes(self) -> bytes:
        return f"+ {self.text}\r\n".encode("ascii", "replace")

    def __str__(self) -> str:
        return f"+ {self.text}"


def _imap_ok(text: str, code: str | None = None) -> ImapReply:
    return ImapReply("OK", text, code)


def _imap_no(text: str, code: str | None = None) -> ImapReply:
    return ImapReply("NO", text, code)


def _imap_bad(text: str, code: str | None = None) -> ImapReply:
    return ImapReply("BAD", text, code)


def _imap_bye(text: str, code: str | None = None) -> ImapReply:
    return ImapReply("BYE", text, code)


IMAP_GREETING = _imap_ok("{host} IMAP server ready", "CAPABILITY {capabilities}")
IMAP_DONE = _imap_ok("{command} completed")
IMAP_LOGGED_IN = _imap_ok("Logged in", "CAPABILITY {capabilities}")
IMAP_LOGOUT = _imap_bye("Logging out")
IMAP_TLS_BEGIN = _imap_ok("Begin TLS negotiation now")
IMAP_SELECTED = _imap_ok("SELECT completed", "READ-WRITE")
IMAP_EXAMINED = _imap_ok("EXAMINE completed", "READ-ONLY")
IMAP_APPENDED = _imap_ok("APPEND completed", "APPENDUID {validity} {uid}")
IMAP_COPIED = _imap_ok("COPY completed", "COPYUID {validity} {source} {target}")
IMAP_MOVED_UIDS = _imap_ok("Moved UIDs", "COPYUID {validity} {source} {target}")   # untagged
IMAP_IDLE_DONE = _imap_ok("IDLE terminated")
IMAP_UIDVALIDITY = _imap_ok("UIDs valid", "UIDVALIDITY {validity}")
IMAP_UIDNEXT = _imap_ok("Predicted next UID", "UIDNEXT {uid}")
IMAP_UNSEEN = _imap_ok("First unseen message", "UNSEEN {number}")
IMAP_PERMANENT_FLAGS = _imap_ok("Flags permitted", "PERMANENTFLAGS ({flags})")
IMAP_CLOSED = _imap_ok("Previous folder closed", "CLOSED")
IMAP_CONTINUE_LITERAL = ImapContinue("Ready for literal data")
IMAP_CONTINUE_IDLE = ImapContinue("idling")
IMAP_CONTINUE_SASL = ImapContinue("")

IMAP_AUTH_FAILED = _imap_no("Authentication failed", "AUTHENTICATIONFAILED")
IMAP_AUTH_LOCKED = _imap_no("Too many failed logins from your address, try again later",
                            "UNAVAILABLE")
IMAP_PLAINTEXT_REFUSED = _imap_no("Plaintext authentication is not allowed without TLS: "
                                  "use STARTTLS", "PRIVACYREQUIRED")
IMAP_UNKNOWN_MECHANISM = _imap_no("Unsupported authentication mechanism", "CANNOT")
IMAP_TLS_UNAVAILABLE = _imap_no("TLS is not available", "CANNOT")
IMAP_NO_SUCH_FOLDER = _imap_no("No such folder", "NONEXISTENT")
IMAP_TRY_CREATE = _imap_no("No such folder", "TRYCREATE")
IMAP_FOLDER_EXISTS = _imap_no("Folder already exists", "ALREADYEXISTS")
IMAP_BAD_FOLDER_NAME = _imap_no("{detail}", "CANNOT")
IMAP_BAD_FOLDER_ENCODING = _imap_no("Folder name is not valid modified UTF-7", "CANNOT")
IMAP_SELECTED_FOLDER = _imap_no("Not possible with the selected folder: UNSELECT first",
                                "CANNOT")
IMAP_READ_ONLY = _imap_no("Folder is read-only (selected with EXAMINE)", "CANNOT")
IMAP_TOO_BIG = _imap_no("Message exceeds the size limit", "TOOBIG")
IMAP_EMPTY_MESSAGE = _imap_no("The message is empty", "CANNOT")
IMAP_EXPUNGE_ISSUED = _imap_no("Some of the requested messages no longer exist",
                               "EXPUNGEISSUED")
IMAP_BAD_CHARSET = _imap_no("Unsupported charset", "BADCHARSET (US-ASCII UTF-8)")
IMAP_TEMPORARY = _imap_no("Temporary server error, try again later", "UNAVAILABLE")
IMAP_SERVER_BUG = _imap_no("Internal server error, try again later", "SERVERBUG")

IMAP_SYNTAX = _imap_bad("{detail}")
IMAP_WRONG_STATE = _imap_bad("Command not valid in this state")
IMAP_NO_SUCH_MESSAGE = _imap_bad("Message number out of range")
IMAP_NUL_IN_COMMAND = _imap_bad("NUL character in command")
IMAP_LINE_TOO_LONG = _imap_bad("Command line too long", "TOOBIG")          # untagged
IMAP_LITERAL_TOO_BIG = _imap_bad("Literal too big", "TOOBIG")
IMAP_COMMAND_TOO_BIG = _imap_bad("Command too big", "TOOBIG")
IMAP_AUTH_CANCELLED = _imap_bad("Authentication cancelled")
IMAP_BAD_CREDENTIALS = _imap_bad("Cannot decode the credentials: {detail}")
IMAP_TLS_ACTIVE = _imap_bad("TLS is already active")
IMAP_EXPECTED_DONE = _imap_bad("Expected DONE to end IDLE")

IMAP_TOO_MANY_ERRORS = _imap_bye("Too many errors, closing connection")
IMAP_TIMEOUT = _imap_bye("Autologout; idle for too long")
IMAP_SHUTTING_DOWN = _imap_bye("Server shutting down, closing connection", "UNAVAILABLE")
IMAP_VALIDITY_CHANGED = _imap_bye("The folder's UIDs were renumbered; please reconnect",
                                  "UNAVAILABLE")
