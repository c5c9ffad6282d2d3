"""Address resolution: an address -> local mailboxes, outside addresses, or rejection, with why.

The rules are DESIGN 5 "Address resolution". For a local domain the first
rule that matches wins: the alias `local@domain`, the bare alias `local`, the
mailbox `local` (when the domain serves it), the catch-all `@domain`. Each
rule is tried with the local part as written first and then without its
recipient-delimiter extension, as Postfix does, so `bhayden+lists@...` reaches
`bhayden` unless an alias names `bhayden+lists` itself.

Alias targets are resolved again the same way. The whole alias graph is
expanded once when the Router is built, so loops, chains deeper than
MAX_ALIAS_DEPTH, dangling targets and a postmaster that reaches no mailbox
are configuration errors caught by `check`, never surprises at RCPT time.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.addresses import Address, AddressError, parse_mailbox
from ..core.errors import ConfigError
from .schema import ALL_MAILBOXES, Config

MAX_ALIAS_DEPTH = 10      # DESIGN 5 rule 4: a deeper chain is a config error

LOCAL, REMOTE, REJECTED = "local", "remote", "rejected"


@dataclass(frozen=True)
class Resolution:
    address: Address                  # as given (domain lower-cased)
    result: str                       # LOCAL | REMOTE | REJECTED
    mailboxes: tuple[str, ...]        # local mailboxes that get a copy
    forward: tuple[Address, ...]      # outside addresses it goes on to
    reason: str                       # one sentence a newcomer understands
    rule: str = ""                    # the rule that matched first, for logs

    def as_json(self, as_given: str | None = None) -> dict:
        return {"address": as_given or str(self.address), "result": self.result,
                "mailboxes": list(self.mailboxes),
                "forward": [str(address) for address in self.forward],
                "reason": self.reason}


@dataclass(frozen=True)
class _Rule:
    kind: str                  # "alias", "bare alias", "mailbox", "catch-all"
    key: str                   # as shown to the user: "sales@example.net", "@example.com"
    targets: tuple[str, ...]   # alias targets; for a mailbox, its name

    @property
    def label(self) -> str:
        return f"{self.kind} {self.key}"


def _paren(note: str) -> str:
    return f" ({note})" if note else ""


def _chain(path: tuple[_Rule, ...]) -> str:
    return " -> ".join(rule.label for rule in path)


class _Expansion:
    """Mailboxes and forwards collected while following alias targets."""

    def __init__(self):
        self.mailboxes: dict[str, None] = {}
        self.forward: dict[str, Address] = {}


class Router:
    """Resolves addresses against one Config. Built once per config; immutable."""

    def __init__(self, config: Config):
        self.config = config
        self.delimiters = config.server.recipient_delimiter
        self._domains = dict(config.domains)
        self._mailboxes = frozenset(config.mailboxes)
        self._aliases = dict(config.aliases)
        self._validate()

    # ------------------------------------------------------------ queries

    @property
    def primary_domain(self) -> str:
        """The domain of a bare local name (`<postmaster>`, `sendmail root`): the
        server's hostname when it is a local domain, else the first domain."""
        hostname = self.config.server.hostname
        return hostname if hostname in self._domains else next(iter(self._domains), hostname)

    def serves(self, domain: str, mailbox: str) -> bool:
        served = self._domains.get(domain.lower())
        return served == ALL_MAILBOXES or (served is not None and mailbox in served)

    def login(self, name: str) -> str | None:
        """The mailbox a login name means: `name`, or `name@domain` for a local
        domain that serves it. None when it means no mailbox."""
        name = name.strip().lower()
        local, at, domain = name.rpartition("@") if "@" in name else (name, "", "")
        if local not in self._mailboxes:
            return None
        if at and not self.serves(domain, local):
            return None
        return local

    def resolve(self, address: Address) -> Resolution:
        """Where mail to `address` goes and why (DESIGN 5)."""
        domain = address.domain
        if domain not in self._domains:
            return Resolution(address, REMOTE, (), (address,),
                              f"{domain or 'no domain'} is not one of this server's domains: "
                              "the mail is relayed to it (only for logged-in users "
                              "and trusted networks)")
        rule, note = self._match(address.local, domain)
        if rule is None:
            return Resolution(address, REJECTED, (), (),
                              f"{domain} is a local domain but no alias, mailbox or catch-all "
                              f"matches {address.local!r}{_paren(note)}; "
                              "RCPT TO gets 550 5.1.1")
        found = _Expansion()
        self._expand(rule, (), found)
        reason = self._explain(address, rule, found, note)
        return Resolution(address, LOCAL, tuple(found.mailboxes), tuple(found.forward.values()),
                          reason, rule.label)

    def owns(self, mailbox: str, address: Address) -> bool:
        """May a user logged in as `mailbox` send as `address`? Yes when the
        address routes (also) to their own mailbox."""
        return mailbox in self.resolve(address).mailboxes

    # ------------------------------------------------------------ rules

    def _candidates(self, local: str) -> list[str]:
        """The local part as written, then without its delimiter extension."""
        local = local.lower()
        forms = [local]
        if self.delimiters:
            cut = min((local.find(d) for d in self.delimiters if local.find(d) > 0), default=-1)
            if cut > 0:
                forms.append(local[:cut])
        return forms

    def _match(self, local: str, domain: str) -> tuple[_Rule | None, str]:
        """The first rule that matches local@domain, and a note on what was tried."""
        forms = self._candidates(local)
        for form in forms:
            targets = self._aliases.get(f"{form}@{domain}")
            if targets:
                return _Rule("alias", f"{form}@{domain}", targets), self._ext_note(local, form)
        for form in forms:
            targets = self._aliases.get(form)
            if targets:
                return _Rule("bare alias", form, targets), self._ext_note(local, form)
        unserved = ""
        for form in forms:
            if form in self._mailboxes:
                if self.serves(domain, form):
                    return _Rule("mailbox", form, (form,)), self._ext_note(local, form)
                unserved = f"mailbox {form} exists, but {domain} does not serve it"
        targets = self._aliases.get(f"@{domain}")
        if targets:
            return _Rule("catch-all", f"@{domain}", targets), unserved
        return None, unserved

    def _ext_note(self, local: str, form: str) -> str:
        if form == local.lower():
            return ""
        return f"the extension {local[len(form):]!r} is dropped: recipient_delimiter"

    def _expand(self, rule: _Rule, path: tuple[_Rule, ...], found: _Expansion) -> None:
        """Follow `rule` to mailboxes and outside addresses; raise ConfigError on
        a loop, a chain deeper than MAX_ALIAS_DEPTH or a target that goes nowhere."""
        if rule.kind == "mailbox":
            found.mailboxes.setdefault(rule.key)
            return
        if rule in path:
            raise self._alias_error(path[0] if path else rule,
                                    "alias loop: " + _chain(path + (rule,)))
        path = path + (rule,)
        if len(path) > MAX_ALIAS_DEPTH:
            raise self._alias_error(path[0], f"alias chain deeper than {MAX_ALIAS_DEPTH}: "
                                    + _chain(path))
        for target in rule.targets:
            if self._is_outside(target):
                found.forward.setdefault(target, parse_mailbox(target, utf8=True))
            else:
                self._expand(self._target_rule(target, path), path, found)

    def _is_outside(self, target: str) -> bool:
        return "@" in target and target.rpartition("@")[2].lower() not in self._domains

    def _target_rule(self, target: str, path: tuple[_Rule, ...]) -> _Rule:
        """The rule a (local) alias target stands for."""
        if "@" not in target:
            # A bare target is the mailbox of that name; failing that, a bare
            # alias (a group). The mailbox comes first so `bob = bob, bob@gmail`
            # keeps a copy instead of looping.
            if target in self._mailboxes:
                return _Rule("mailbox", target, (target,))
            if target in self._aliases:
                return _Rule("bare alias", target, self._aliases[target])
            raise self._alias_error(path[0], f"target {target!r} is neither a mailbox "
                                    "nor an alias")
        try:
            address = parse_mailbox(target, utf8=True)
        except AddressError as error:
            raise self._alias_error(path[0], f"target {target!r}: {error}") from None
        rule, note = self._match(address.local, address.domain)
        if rule is None:
            raise self._alias_error(path[0], f"target {target} does not exist{_paren(note)}")
        return rule

    def _alias_error(self, rule: _Rule, message: str) -> ConfigError:
        return self.config.error("aliases", rule.key, message)

    # ------------------------------------------------------------ explanations

    def _explain(self, address: Address, rule: _Rule, found: _Expansion, note: str) -> str:
        domain = address.domain
        if rule.kind == "mailbox":
            served = "serves every mailbox" if self._domains[domain] == ALL_MAILBOXES \
                else "serves this mailbox"
            extra = f"; {note}" if note else ""
            return f"delivered to mailbox {rule.key} ({domain} {served}{extra})"
        if rule.kind == "alias":
            why = f"alias {rule.key} -> {', '.join(rule.targets)}{_paren(note)}"
        elif rule.kind == "bare alias":
            why = (f"alias {rule.key} (at every local domain) -> {', '.join(rule.targets)}"
                   f"{_paren(note)}")
        else:
            why = (f"no alias or mailbox matches {address.local!r}, so the catch-all "
                   f"{rule.key} -> {', '.join(rule.targets)} takes it{_paren(note)}")
        ends = []
        if found.mailboxes:
            noun = "mailbox" if len(found.mailboxes) == 1 else "mailboxes"
            ends.append(f"delivered to {noun} {', '.join(found.mailboxes)}")
        if found.forward:
            ends.append("forwarded to " + ", ".join(str(a) for a in found.forward.values()))
        return f"{' and '.join(ends)}: {why}"

    # ------------------------------------------------------------ validation

    def _validate(self) -> None:
        for key, targets in self._aliases.items():
            if key.startswith("@"):
                rule = _Rule("catch-all", key, targets)
            elif "@" in key:
                rule = _Rule("alias", key, targets)
            else:
                rule = _Rule("bare alias", key, targets)
            self._expand(rule, (), _Expansion())
        for domain in self._domains:
            postmaster = self.resolve(Address("postmaster", domain))
            if not postmaster.mailboxes:
                raise self.config.error(
                    "domains", domain,
                    f"postmaster@{domain} must reach a mailbox (RFC 5321 4.5.1): "
                    f"add 'postmaster = <mailbox>' to [aliases]")
