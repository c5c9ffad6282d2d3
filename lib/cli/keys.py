"""dkim-keygen [DOMAIN...]: makes the DKIM keys that are missing, never replacing
one, and prints every key's public half as the DNS TXT record to publish.

Keys go to <data_dir>/dkim/<domain>/<selector>.key (lib/outbound/dkim.py owns
the format), mode 0600 in folders of mode 0700; run by root, the files and
folders it makes belong to [server] user, who signs with them. A key appears
under its final name only once it is whole and on disk (written to a
temporary name, fsync'd, then linked, which fails rather than replace a key
another run made meanwhile).
"""

from __future__ import annotations

import os
import pwd
import sys
from pathlib import Path

from ..config import schema as config_module
from ..core.durable import fsync_dir
from ..outbound import dkim
from ..store import datadir
from .common import EXIT_FAILURE, EXIT_OK
from .dnsrecords import Record, chosen_domains

KEY_MODE = 0o600
FOLDER_MODE = 0o700


def cmd_dkim_keygen(args) -> int:
    config = config_module.load(args.config, tls_files=False)
    domains = chosen_domains(config, args.domains)
    data_dir = config.server.data_dir
    problem = datadir.refusal(data_dir)
    if problem:
        raise config.error("server", "data_dir", problem)
    owner = _owner(config)
    failed = False
    for domain in domains:
        for algorithm, selector in config.dkim.selectors().items():
            path = dkim.key_path(data_dir, domain, selector)
            try:
                made = _make_key(path, algorithm, data_dir, owner)
                key = dkim.load_key(data_dir, domain, algorithm, selector)
            except dkim.MissingLibrary as error:
                print(f"dkim-keygen: {error}", file=sys.stderr)
                return EXIT_FAILURE
            except (dkim.DkimError, OSError) as error:
                print(f"dkim-keygen: {error}", file=sys.stderr)
                failed = True
                continue
            if key is None:
                print(f"dkim-keygen: {path} is not a key file (a dangling link?)",
                      file=sys.stderr)
                failed = True
                continue
            size = f"RSA {dkim.RSA_BITS}" if algorithm == "rsa" else "Ed25519"
            print(f"; {'made' if made else 'kept'} {path} ({size}, selector {selector})")
            print(Record(key.record_name, "TXT", "DKIM", key.public_record()).zone_line())
    print("; publish these records (dns-records prints every record a domain needs), then "
          "run reload: the server reads its keys at start and on reload")
    return EXIT_FAILURE if failed else EXIT_OK


def _owner(config: config_module.Config) -> tuple[int, int] | None:
    """(uid, gid) of [server] user when run by root; None otherwise."""
    user = config.server.user
    if os.geteuid() != 0 or not user:
        return None
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise config.error("server", "user", f"no user {user!r} on this system") from None
    return account.pw_uid, account.pw_gid


def _make_key(path: Path, algorithm: str, data_dir: Path, owner: tuple[int, int] | None) -> bool:
    """Write a new key at `path` unless one is there; True when it was made."""
    if os.path.lexists(path):
        return False
    for folder in (data_dir, data_dir / dkim.KEY_FOLDER, path.parent):
        _make_folder(folder, owner)
    content = dkim.new_key_file(algorithm)
    temp = path.with_name(f".{path.name}.{os.getpid()}.new")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 KEY_MODE)
    try:
        os.fchmod(fd, KEY_MODE)                 # whatever the umask
        if owner is not None:
            os.fchown(fd, *owner)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(temp)
        raise
    os.close(fd)
    try:
        os.link(temp, path)                     # never replaces: EEXIST if a key appeared
    except FileExistsError:
        return False
    finally:
        os.unlink(temp)
    fsync_dir(path.parent)
    return True


def _make_folder(folder: Path, owner: tuple[int, int] | None) -> None:
    try:
        folder.mkdir(mode=FOLDER_MODE)
    except FileExistsError:
        return
    folder.chmod(FOLDER_MODE)                   # whatever the umask
    if owner is not None:
        os.chown(folder, *owner)
    fsync_dir(folder.parent)
