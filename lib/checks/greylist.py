"""Greylisting, at RCPT: an unknown (client network, sender, recipient) triplet
is told to come back later (451 4.7.1), and accepted once [checks]
greylist_delay has passed since it was first seen; a triplet that passed is
remembered for 30 days after its last use. The triplets live in SQLite at
<data_dir>/greylist.sqlite, so a restart forgets nothing.

- The client network is the /24 (IPv4) or /64 (IPv6): big senders retry from
  another address of the same farm.
- The sender is normalised so that per-message bounce addresses still match:
  lower case, a BATV prvs= tag dropped, digit runs in the local part made "#"
  (as postgrey does); the null sender is "<>".
- A first attempt that is not retried within RETRY_WINDOW is forgotten.
- A client that passes SPF for a sender domain that has passed greylisting
  before (with SPF passing then too) skips it: that domain's mail servers have
  shown they retry, and SPF says this client is one of them.
- Expired rows are pruned as the store is used, at most PRUNE_BATCH rows once
  every PRUNE_INTERVAL, so no single RCPT pays for a large clean-up.
- One connection, under a lock, serves every thread (greylisting is one short
  indexed query per RCPT); WAL mode lets `screen` read while `serve` writes.
- If the store cannot be used, the recipient is deferred (451 4.3.0), as for
  any look-up that fails: never silently accepted.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..core.replies import GREYLISTED, LOCAL_ERROR
from .verdict import ERROR, CheckResult

CHECK = "greylist"
FILE_NAME = "greylist.sqlite"
FILES = (FILE_NAME, f"{FILE_NAME}-wal", f"{FILE_NAME}-shm", f"{FILE_NAME}-journal")
REMEMBER_PASSED = 30 * 86400     # a triplet (or domain) that passed, after its last use
RETRY_WINDOW = 12 * 3600         # a first attempt must be retried within this, or is forgotten
PRUNE_INTERVAL = 60.0            # seconds between two prunings
PRUNE_BATCH = 1000               # rows deleted at most by one pruning
BUSY_TIMEOUT = 5.0               # seconds to wait for another process's write lock

PASS = "pass"                    # known triplet (or domain): accepted
DEFERRED = "greylisted"

SCHEMA = """
CREATE TABLE IF NOT EXISTS triplets (
    network TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    first_seen REAL NOT NULL,
    passed REAL,                 -- NULL until the triplet has passed
    expires REAL NOT NULL,       -- forgotten after this
    PRIMARY KEY (network, sender, recipient)
);
CREATE INDEX IF NOT EXISTS triplets_expires ON triplets (expires);
CREATE TABLE IF NOT EXISTS domains (   -- sender domains that passed with SPF passing
    domain TEXT PRIMARY KEY,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS domains_expires ON domains (expires);
"""


class Greylist:
    """The greylisting store of one data_dir; `check` is safe from many threads."""

    def __init__(self, data_dir: Path, delay: float, *,
                 clock: Callable[[], float] = time.time):
        self.path = Path(data_dir) / FILE_NAME
        self.delay = delay
        self._clock = clock                  # wall-clock time: it must survive restarts
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._next_prune = 0.0

    def check(self, client_ip: str, sender: str, recipient: str, *,
              spf_pass: bool = False, record: bool = True,
              delay: float | None = None) -> CheckResult:
        """Greylist one recipient. `spf_pass`: SPF passed for the sender's domain.
        `record=False` answers without changing the store (for `screen`).
        `delay`: the config's greylist_delay now (a reload may change it)."""
        try:
            network = client_network(client_ip)
        except ValueError:
            return CheckResult(CHECK, ERROR, f"{client_ip!r} is not an IP address",
                               reply=LOCAL_ERROR)
        triplet = (network, normalise_sender(sender), recipient.lower())
        try:
            with self._lock:
                return self._check(triplet, spf_pass, record,
                                   self.delay if delay is None else delay)
        except (sqlite3.Error, OSError) as error:
            return CheckResult(CHECK, ERROR, f"greylist store {self.path}: {error}",
                               reply=LOCAL_ERROR)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- inside the lock
    def _check(self, triplet: tuple[str, str, str], spf_pass: bool,
               record: bool, delay: float) -> CheckResult:
        db = self._connection()
        now = self._clock()
        described = "{} from {} to {}".format(*triplet)
        if record and now >= self._next_prune:
            self._prune(db, now)
        domain = triplet[1].rpartition("@")[2] if "@" in triplet[1] else ""
        if spf_pass and domain and self._domain_known(db, domain, now):
            if record:
                self._remember_domain(db, domain, now)
            return CheckResult(CHECK, PASS, f"{described}: skipped, SPF passes for {domain}, "
                                            "which passed greylisting before")
        row = db.execute("SELECT first_seen, passed, expires FROM triplets WHERE network = ? "
                         "AND sender = ? AND recipient = ?", triplet).fetchone()
        if row is not None and row[2] < now:
            row = None                           # expired, not yet pruned: forgotten
        if row is not None and row[1] is not None:
            if record:
                self._write(db, "UPDATE triplets SET expires = ? WHERE network = ? AND "
                                "sender = ? AND recipient = ?", (now + REMEMBER_PASSED, *triplet))
                if spf_pass and domain:
                    self._remember_domain(db, domain, now)
            return CheckResult(CHECK, PASS, f"{described}: known since it passed")
        first_seen = now if row is None else row[0]
        waited = now - first_seen
        if row is not None and waited >= delay:
            if record:
                self._write(db, "UPDATE triplets SET passed = ?, expires = ? WHERE "
                                "network = ? AND sender = ? AND recipient = ?",
                            (now, now + REMEMBER_PASSED, *triplet))
                if spf_pass and domain:
                    self._remember_domain(db, domain, now)
            return CheckResult(CHECK, PASS, f"{described}: retried after {waited:.0f}s, "
                                            "passed")
        if row is None and record:
            self._write(db, "INSERT OR REPLACE INTO triplets (network, sender, recipient, "
                            "first_seen, passed, expires) VALUES (?, ?, ?, ?, NULL, ?)",
                        (*triplet, now, now + RETRY_WINDOW))
        seconds = max(1, math.ceil(delay - waited))
        return CheckResult(CHECK, DEFERRED,
                           f"{described}: {'first seen' if row is None else 'retried'}, "
                           f"{seconds}s to wait", reply=GREYLISTED.fill(seconds=seconds))

    def _domain_known(self, db: sqlite3.Connection, domain: str, now: float) -> bool:
        row = db.execute("SELECT expires FROM domains WHERE domain = ?", (domain,)).fetchone()
        return row is not None and row[0] >= now

    def _remember_domain(self, db: sqlite3.Connection, domain: str, now: float) -> None:
        self._write(db, "INSERT OR REPLACE INTO domains (domain, expires) VALUES (?, ?)",
                    (domain, now + REMEMBER_PASSED))

    def _prune(self, db: sqlite3.Connection, now: float) -> None:
        """Delete up to PRUNE_BATCH expired rows of each table."""
        self._next_prune = now + PRUNE_INTERVAL
        with db:
            db.execute("DELETE FROM triplets WHERE rowid IN (SELECT rowid FROM triplets "
                       "WHERE expires < ? LIMIT ?)", (now, PRUNE_BATCH))
            db.execute("DELETE FROM domains WHERE rowid IN (SELECT rowid FROM domains "
                       "WHERE expires < ? LIMIT ?)", (now, PRUNE_BATCH))

    @staticmethod
    def _write(db: sqlite3.Connection, sql: str, values: tuple) -> None:
        with db:                                  # one transaction, committed at once
            db.execute(sql, values)

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            # Made here first, mode 0600: the triplets name who writes to whom.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
            os.close(fd)
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, check_same_thread=False,
                                 isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")    # losing the last second is fine
                db.executescript(SCHEMA)
            except sqlite3.Error:
                db.close()
                raise
            self._db = db
        return self._db


def client_network(client_ip: str) -> str:
    """The /24 (IPv4) or /64 (IPv6) of an address; IPv4-mapped IPv6 is IPv4."""
    ip = ipaddress.ip_address(client_ip.strip("[]"))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def normalise_sender(sender: str) -> str:
    """The sender as greylisting compares it: lower case; "<>" for the null
    sender; a BATV tag (prvs=tag=user@...) dropped and digit runs of the local
    part made "#", so that per-message bounce addresses match (as postgrey)."""
    if not sender:
        return "<>"
    local, at, domain = sender.lower().rpartition("@")
    if not at:
        return sender.lower()
    batv = re.fullmatch(r"prvs=[^=]+=(.+)", local)
    if batv:
        local = batv.group(1)
    return f"{re.sub(r'[0-9]+', '#', local)}@{domain}"
