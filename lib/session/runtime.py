"""What sessions are given: the Runtime (everything derived from one config,
swapped whole on reload) and the Services (long-lived shared objects)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from ..checks.connections import ConnectionTracker
from ..checks.greylist import Greylist
from ..checks.inflow import InFlow
from ..checks.logins import Authenticator, AuthThrottle
from ..checks.workers import CheckWorkers
from ..config import schema as config_module
from ..config import tls
from ..config.router import Router
from ..core import passwords
from ..core.durable import DirSyncer
from ..log.events import EventLog
from ..store.intake import Intake
from ..store.maildir import MaildirStore
from ..store.spool import Spool


@dataclass(frozen=True)
class Runtime:
    """One validated configuration and what is derived from it. Immutable: a
    session keeps the Runtime it started with, whatever a reload does."""
    config: config_module.Config
    router: Router
    tls: ssl.SSLContext | None

    @property
    def hostname(self) -> str:
        return self.config.server.hostname


def load_runtime(path: str | Path) -> Runtime:
    """Parse, validate and prepare a config; raises ConfigError naming section and key."""
    cfg = config_module.load(path)
    return Runtime(config=cfg, router=Router(cfg), tls=tls.server_context(cfg))


@dataclass(frozen=True)
class Services:
    """Objects every session shares, alive for the whole process."""
    store: MaildirStore
    spool: Spool
    intake: Intake
    auth: Authenticator
    connections: ConnectionTracker
    flow: InFlow
    greylist: Greylist            # opened on first use, only when [checks] greylist = on
    check_workers: CheckWorkers   # processes for DKIM/DMARC, started when first needed

    @classmethod
    def create(cls, cfg: config_module.Config) -> Services:
        syncer = DirSyncer()
        data_dir = cfg.server.data_dir
        store = MaildirStore(data_dir / "mail", cfg.server.hostname, syncer)
        spool = Spool(data_dir / "queue", syncer)
        return cls(store=store, spool=spool, intake=Intake(store, spool),
                   auth=Authenticator(AuthThrottle(), passwords.VerifyCache()),
                   connections=ConnectionTracker(), flow=InFlow(),
                   greylist=Greylist(data_dir, cfg.checks.greylist_delay),
                   check_workers=CheckWorkers(log=EventLog("checks")))
