"""The folders of a mailbox, for IMAP: Maildir++ subfolders of its Maildir,
their names, the special-use folders, subscriptions; and the MailStore that
shares one FolderIndex per folder between the sessions of a process.

Names are Unicode with "." between levels (Dovecot's Maildir++ default):
folder B inside A is "A.B", kept in `<maildir>/.A.B/` (with `tmp/ new/ cur/`
and the Maildir++ marker file `maildirfolder`). On disk each name is written
in modified UTF-7 (RFC 3501 5.1.3) as Dovecot does, so any name is printable
ASCII there; "/" (a path separator), control characters and the LIST
wildcards "%" and "*" are refused, as are empty levels ("A..B", ".A").
INBOX, in any case, is the Maildir itself. Keywords are not stored: only the
five system flags (see folderindex).

`Sent`, `Drafts`, `Trash` and `Junk` are made (and subscribed) on a mailbox's
first IMAP login, carrying the SPECIAL-USE attributes of RFC 6154; the SMTP
side files spam into `.Junk/`. Subscriptions are the file `subscriptions` in
the Maildir, one name a line in UTF-8, replaced atomically.
"""

from __future__ import annotations

import os
import secrets
import shutil
import threading
import weakref
from collections.abc import Iterable

from ..core.durable import DirSyncer, replace_durably
from . import mutf7
from .folderindex import FolderIndex
from .maildir import MaildirStore

DELIMITER = "."
INBOX = "INBOX"
SPECIAL_USE = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk"}
SUBSCRIPTIONS = "subscriptions"
MARKER = "maildirfolder"            # Maildir++: this directory is a folder
DELETING = "imap-deleted."          # a folder being removed (renamed out of sight first)
MAX_NAME = 200                      # encoded octets: a directory name may have 255
MAX_INDEXES = 5000                  # folder indexes kept per process


class FolderError(Exception):
    """A folder operation refused; the IMAP layer answers NO with a code."""


class FolderMissing(FolderError):
    pass


class FolderExists(FolderError):
    pass


class BadFolderName(FolderError):
    pass


def canonical(name: str) -> str:
    """INBOX in any case is INBOX, also as the first level of a longer name."""
    head, dot, rest = name.partition(DELIMITER)
    return INBOX + dot + rest if head.upper() == INBOX else name


def check_name(name: str) -> str:
    """The canonical name, or BadFolderName saying why it cannot be a folder."""
    name = canonical(name)
    if not name:
        raise BadFolderName("Empty folder name")
    if any(c in "/%*" or c < " " or c == "\x7f" for c in name):
        raise BadFolderName("Folder names cannot contain / % * or control characters")
    if "" in name.split(DELIMITER):
        raise BadFolderName("Empty level in folder name")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise BadFolderName("Folder name is not valid UTF-8") from None
    if len(mutf7.encode(name)) > MAX_NAME:
        raise BadFolderName("Folder name too long")
    return name


def parents(name: str) -> list[str]:
    """"A.B.C" -> ["A", "A.B"]."""
    levels = name.split(DELIMITER)
    return [DELIMITER.join(levels[:i]) for i in range(1, len(levels))]


class MailStore:
    """The IMAP view of every Maildir under one root, shared by the sessions of
    a process: one FolderIndex per folder, so a 10,000-message folder is
    listed and its UID list read once, not once per session."""

    _registry: weakref.WeakKeyDictionary[MaildirStore, MailStore] = weakref.WeakKeyDictionary()
    _registry_lock = threading.Lock()

    def __init__(self, maildirs: MaildirStore):
        self.maildirs = maildirs
        self.syncer: DirSyncer = maildirs.syncer
        self._indexes: dict[str, FolderIndex] = {}
        self._lock = threading.Lock()
        self.subscriptions_lock = threading.Lock()

    @classmethod
    def of(cls, maildirs: MaildirStore) -> MailStore:
        """The one MailStore of these Maildirs (made on first use)."""
        with cls._registry_lock:
            store = cls._registry.get(maildirs)
            if store is None:
                store = cls._registry[maildirs] = cls(maildirs)
            return store

    def account(self, mailbox: str) -> Account:
        return Account(self, mailbox, str(self.maildirs.ensure(mailbox)))

    def index(self, path: str) -> FolderIndex:
        with self._lock:
            index = self._indexes.get(path)
            if index is None:
                if len(self._indexes) >= MAX_INDEXES:       # forget the oldest half
                    for key in list(self._indexes)[:MAX_INDEXES // 2]:
                        del self._indexes[key]
                index = self._indexes[path] = FolderIndex(path, self.syncer)
            return index

    def forget(self, path: str) -> None:
        """A folder was deleted or renamed: its index (and its children's) goes."""
        with self._lock:
            for key in [k for k in self._indexes if k == path or k.startswith(path + ".")]:
                del self._indexes[key]


class Account:
    """One mailbox's folders."""

    def __init__(self, store: MailStore, mailbox: str, root: str):
        self.store = store
        self.mailbox = mailbox
        self.root = root

    # ------------------------------------------------------------ names and paths

    def path(self, name: str) -> str:
        name = canonical(name)
        if name == INBOX:
            return self.root
        return os.path.join(self.root, "." + mutf7.encode(name))

    def exists(self, name: str) -> bool:
        try:
            return os.path.isdir(os.path.join(self.path(check_name(name)), "cur"))
        except BadFolderName:
            return False

    def names(self) -> list[str]:
        """Every folder there is, INBOX first."""
        found = [INBOX]
        for entry in os.scandir(self.root):
            if entry.name[:1] != "." or entry.name in (".", "..") or not entry.is_dir():
                continue
            try:
                name = check_name(mutf7.decode(entry.name[1:]))
            except (mutf7.Mutf7Error, BadFolderName):
                continue                       # not a folder we made or could name
            if name != INBOX:
                found.append(name)
        return found

    def index(self, name: str) -> FolderIndex:
        """The folder's index; FolderMissing when there is no such folder."""
        if not self.exists(name):
            raise FolderMissing(name)
        return self.store.index(self.path(name))

    @staticmethod
    def special_use(name: str) -> str | None:
        return SPECIAL_USE.get(name)

    # ------------------------------------------------------------ changes

    def create(self, name: str) -> None:
        name = check_name(name)
        if self.exists(name) or name == INBOX:
            raise FolderExists(name)
        for parent in parents(name):           # RFC 9051 6.3.4: superiors are made too
            if not self.exists(parent):
                self._make(parent)
        self._make(name)

    def _make(self, name: str) -> None:
        path = self.path(name)
        os.makedirs(path, mode=0o700, exist_ok=True)
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)
        with open(os.path.join(path, MARKER), "ab"):
            pass
        self.store.syncer.sync(path)
        self.store.syncer.sync(self.root)

    def delete(self, name: str) -> None:
        """Remove the folder and its messages; folders inside it stay."""
        name = check_name(name)
        if name == INBOX:
            raise BadFolderName("INBOX cannot be deleted")
        if not self.exists(name):
            raise FolderMissing(name)
        path = self.path(name)
        doomed = os.path.join(self.root, DELETING + secrets.token_hex(6))
        os.rename(path, doomed)                # out of sight at once, then removed
        self.store.forget(path)
        self.store.syncer.sync(self.root)
        shutil.rmtree(doomed, ignore_errors=True)
        self.unsubscribe(name)

    def rename(self, old: str, new: str) -> None:
        old, new = check_name(old), check_name(new)
        if not self.exists(old):
            raise FolderMissing(old)
        if new == INBOX or self.exists(new):
            raise FolderExists(new)
        if new.startswith(old + DELIMITER):
            raise BadFolderName("A folder cannot move inside itself")
        for parent in parents(new):
            if not self.exists(parent):
                self._make(parent)
        if old == INBOX:
            self._empty_inbox_into(new)
            return
        moves = [(old, new)] + [(child, new + child[len(old):]) for child in self.names()
                                if child.startswith(old + DELIMITER)]
        for _, target in moves:
            if os.path.exists(self.path(target)):
                raise FolderExists(target)
        for source, target in moves:
            os.rename(self.path(source), self.path(target))
            self.store.forget(self.path(source))
            self.store.forget(self.path(target))
        self.store.syncer.sync(self.root)
        with self.store.subscriptions_lock:
            names = self.subscriptions()
            renamed = [new + n[len(old):] if n == old or n.startswith(old + DELIMITER) else n
                       for n in names]
            if renamed != names:
                self._save_subscriptions(renamed)

    def _empty_inbox_into(self, new: str) -> None:
        """RENAME INBOX (RFC 9051 6.3.6): its messages move to a new folder; it stays."""
        self._make(new)
        target = os.path.join(self.path(new), "cur")
        for sub in ("new", "cur"):
            folder = os.path.join(self.root, sub)
            for name in os.listdir(folder):
                if name[:1] == ".":
                    continue
                try:
                    os.rename(os.path.join(folder, name),
                              os.path.join(target, name if ":" in name else name + ":2,"))
                except FileNotFoundError:
                    pass
        self.store.syncer.sync(target)

    def ensure_special(self) -> None:
        """Sent, Drafts, Trash and Junk exist (made and subscribed on first use);
        leftovers of an interrupted DELETE are removed."""
        missing = [name for name in SPECIAL_USE if not self.exists(name)]
        for name in missing:
            self._make(name)
        if missing:
            self.subscribe(*missing)
        for entry in os.scandir(self.root):
            if entry.name.startswith(DELETING):
                shutil.rmtree(entry.path, ignore_errors=True)

    # ------------------------------------------------------------ subscriptions

    def subscriptions(self) -> list[str]:
        try:
            with open(os.path.join(self.root, SUBSCRIPTIONS), encoding="utf-8",
                      errors="replace") as handle:
                return [line.rstrip("\n") for line in handle if line.strip()]
        except FileNotFoundError:
            return []

    def subscribe(self, *names: str) -> None:
        with self.store.subscriptions_lock:
            current = self.subscriptions()
            wanted = current + [n for n in map(canonical, names) if n not in current]
            if wanted != current:
                self._save_subscriptions(wanted)

    def unsubscribe(self, name: str) -> bool:
        """False when the name was not subscribed."""
        name = canonical(name)
        with self.store.subscriptions_lock:
            current = self.subscriptions()
            if name not in current:
                return False
            self._save_subscriptions([n for n in current if n != name])
            return True

    def _save_subscriptions(self, names: Iterable[str]) -> None:
        data = "".join(f"{name}\n" for name in names).encode("utf-8")
        replace_durably(os.path.join(self.root, SUBSCRIPTIONS), data,
                        os.path.join(self.root, "tmp"), self.store.syncer)
