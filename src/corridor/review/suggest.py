"""Review and tighten: the smallest policy that would have allowed what sessions used.

`suggest(events)` reads recorded events (enforce and audit sessions alike: a would-deny
in audit mode is traffic that was used) and builds one allow rule per destination:
- a host and the ports it was reached on; in audit mode too, since "used" means "let through";
- sibling subdomains that were reached on the same ports collapse into `*.PARENT` once
  there are `SIBLINGS_TO_COLLAPSE` of them, unless `*.PARENT` would be a broad rule (a
  top-level domain or public suffix): three hosts of a CDN become one rule, three
  unrelated sites under `.com` do not;
- methods and path prefixes when requests were seen in clear text (plain HTTP or TLS
  inspection), with `inspect: true` when they were seen inside TLS;
- an address reached without a name becomes a one-address `cidr` rule.
Each rule is annotated (YAML comments) with its use count, sessions and last use.

Against an existing policy, `review` says which allow rules no recorded use needed
(candidates to remove) and which refusals recur (candidates to review). Pure: events and
policies in, data and text out.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from corridor.audit.events import ALLOW, DENY, WOULD_DENY, Event, Kind
from corridor.policy import (
    InvalidHost,
    Policy,
    Rule,
    Target,
    decide,
    normalize_host,
    parse_ip_literal,
)

# Two siblings may be coincidence (api. and www.); three of one parent, reached on the
# same ports, are a family of hosts that the next session will likely extend.
SIBLINGS_TO_COLLAPSE = 3
# More distinct path prefixes than this on one rule are shortened to their parent
# directories until they fit: a rule is for reading, not a list of every URL.
MAX_PATHS = 8
# A refusal seen this many times (across all the sessions read) is worth a look.
RECURRING_REFUSALS = 2
# The path characters a policy accepts (corridor.policy.model); a recorded path is cut
# before the first other character.
_PATH_OK = re.compile(r"[!$&'()*+,\-./0-9:;=@A-Z_a-z~%]*")


@dataclass
class Usage:
    """How often, in how many sessions and when last a destination was used."""

    uses: int = 0
    sessions: set[str] = field(default_factory=set)
    last: float = 0.0

    def add(self, event: Event) -> None:
        self.uses += 1
        self.sessions.add(event.session)
        self.last = max(self.last, event.ts)

    def merge(self, other: Usage) -> None:
        self.uses += other.uses
        self.sessions |= other.sessions
        self.last = max(self.last, other.last)


@dataclass
class Suggested:
    """One suggested allow rule and what it covers."""

    rule: Rule
    usage: Usage
    covers: list[str]  # the hosts (or addresses) it stands for
    note: str | None = None  # e.g. what an existing policy says about this traffic


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refusal that recurs."""

    kind: str
    target: str
    reason: str
    decision: str
    uses: int
    sessions: int
    last: float


@dataclass
class Review:
    """The comparison with an existing policy."""

    unused: list[Rule]
    recurring: list[Refusal]


@dataclass
class _Destination:
    ports: set[int] = field(default_factory=set)
    methods: set[str] = field(default_factory=set)
    paths: set[str] = field(default_factory=set)
    inspected: bool = False
    usage: Usage = field(default_factory=Usage)


def suggest(events: Iterable[Event], existing: Policy | None = None) -> list[Suggested]:
    """The smallest set of allow rules that would have let through what was used."""
    names: dict[str, _Destination] = {}
    addresses: dict[str, _Destination] = {}
    http: list[Event] = []
    for event in events:
        if event.kind is Kind.HTTP and event.decision != DENY:
            http.append(event)
        if event.kind is not Kind.CONNECTION or event.decision not in (ALLOW, WOULD_DENY):
            continue
        if event.port is None:
            continue
        name = _name(event.host)
        if name is not None:
            dest = names.setdefault(name, _Destination())
        elif event.address and parse_ip_literal(event.address) is not None:
            dest = addresses.setdefault(event.address, _Destination())
        else:
            continue
        dest.ports.add(event.port)
        dest.usage.add(event)
    for event in http:
        name = _name(event.host)
        if name is None or name not in names:
            continue
        dest = names[name]
        if event.method:
            dest.methods.add(event.method.upper())
        if event.path:
            dest.paths.add(event.path)
        dest.inspected |= event.protocol == "https"
    rules = _host_rules(names) + _address_rules(addresses)
    if existing is not None:
        for suggested in rules:
            suggested.note = _compare(existing, suggested)
    return rules


def review(events: Iterable[Event], existing: Policy) -> Review:
    """Rules of `existing` that no recorded use needed, and refusals that recur."""
    used: set[str] = set()
    refusals: dict[tuple[str, str, str, str], Usage] = {}
    for event in events:
        if event.kind in (Kind.CONNECTION, Kind.HTTP) and event.decision in (ALLOW, WOULD_DENY):
            decision = decide(existing, _target(event))
            if decision.allowed and not decision.would_deny and decision.rule:
                used.add(decision.rule)
        if event.decision in (DENY, WOULD_DENY) and event.kind in (
            Kind.CONNECTION, Kind.DNS, Kind.HTTP,
        ):  # fmt: skip
            key = (event.kind.value, _target_text(event), event.reason or "", event.decision)
            refusals.setdefault(key, Usage()).add(event)
    unused = [r for r in existing.allow if (r.origin or _rule_text(r)) not in used]
    recurring = [
        Refusal(kind, target, reason, decision, u.uses, len(u.sessions), u.last)
        for (kind, target, reason, decision), u in refusals.items()
        if u.uses >= RECURRING_REFUSALS
    ]
    recurring.sort(key=lambda r: (-r.uses, r.target))
    return Review(unused, recurring)


# -- building rules -----------------------------------------------------------------------


def _name(host: str | None) -> str | None:
    if not host or parse_ip_literal(host) is not None:
        return None
    try:
        return normalize_host(host)
    except InvalidHost:
        return None


def _host_rules(names: dict[str, _Destination]) -> list[Suggested]:
    # Siblings: same parent domain, same ports, no methods/paths (those stay per host).
    families: dict[tuple[str, frozenset[int]], list[str]] = {}
    for name, dest in names.items():
        parent = name.partition(".")[2]
        if parent and not dest.methods and not dest.paths:
            families.setdefault((parent, frozenset(dest.ports)), []).append(name)
    out: list[Suggested] = []
    collapsed: set[str] = set()
    # Deepest parents first, so a host joins the most specific family it belongs to.
    for (parent, ports), members in sorted(families.items(), key=lambda f: -f[0][0].count(".")):
        members = [m for m in members if m not in collapsed]
        if len(members) < SIBLINGS_TO_COLLAPSE:
            continue
        apex = names.get(parent)
        with_apex = (
            apex is not None and parent not in collapsed and apex.ports == ports
            and not apex.methods and not apex.paths
        )  # fmt: skip
        rule = _rule(host=("**." if with_apex else "*.") + parent, ports=sorted(ports))
        if rule is None or rule.broad_reason() is not None:
            continue
        covers = ([parent] if with_apex else []) + sorted(members)
        usage = Usage()
        for member in covers:
            usage.merge(names[member].usage)
        collapsed.update(covers)
        out.append(Suggested(rule, usage, covers))
    for name, dest in names.items():
        if name in collapsed:
            continue
        rule = _rule(
            host=name,
            ports=sorted(dest.ports),
            methods=sorted(dest.methods) or None,
            paths=_collapse_paths(dest.paths),
            inspect=dest.inspected,
        )
        if rule is not None:
            out.append(Suggested(rule, dest.usage, [name]))
    out.sort(key=lambda s: (-s.usage.uses, s.covers[0]))
    return out


def _address_rules(addresses: dict[str, _Destination]) -> list[Suggested]:
    out = []
    for text, dest in addresses.items():
        address = ipaddress.ip_address(text.strip("[]"))
        network = ipaddress.ip_network(address)  # /32 or /128: the one address used
        rule = _rule(cidr=str(network), ports=sorted(dest.ports))
        if rule is not None:
            out.append(Suggested(rule, dest.usage, [str(address)]))
    out.sort(key=lambda s: (-s.usage.uses, s.covers[0]))
    return out


def _rule(**fields: object) -> Rule | None:
    """A validated rule (what the policy loader would accept), or None."""
    values = {k: v for k, v in fields.items() if v is not None and v is not False}
    try:
        return Rule.model_validate(values)
    except ValueError:  # pydantic's ValidationError is a ValueError
        return None


def _collapse_paths(paths: set[str]) -> list[str] | None:
    """Directory prefixes covering every path, at most MAX_PATHS; None for "any path"."""
    prefixes = {_directory(_valid_prefix(p)) for p in paths}
    while len(prefixes) > MAX_PATHS:
        prefixes = {_directory(p.rstrip("/")) for p in prefixes}
    kept = sorted(p for p in prefixes if not any(o != p and p.startswith(o) for o in prefixes))
    if not kept or kept == ["/"]:
        return None
    return kept


def _valid_prefix(path: str) -> str:
    path = path.split("?", 1)[0]
    if not path.startswith("/"):
        return "/"
    match = _PATH_OK.match(path, 1)
    return "/" + path[1 : match.end()] if match else "/"


def _directory(path: str) -> str:
    """`/a/b/c` -> `/a/b/`, `/a/b/` -> `/a/b/`, `/a` -> `/`."""
    return path[: path.rfind("/") + 1] or "/"


# -- comparing ----------------------------------------------------------------------------


def _target(event: Event) -> Target:
    address = parse_ip_literal(event.address) if event.address and not event.host else None
    return Target(
        host=event.host,
        port=event.port or 0,
        address=address,
        method=event.method,
        path=event.path,
    )


def _compare(existing: Policy, suggested: Suggested) -> str | None:
    """What the existing policy says about the traffic a suggested rule covers."""
    rule = suggested.rule
    ports = rule.ports or []
    denied = []
    for host in suggested.covers:
        for port in ports:
            target = Target(host=host, port=port) if rule.host else _address_target(host, port)
            decision = decide(existing, target)
            if not decision.allowed or decision.would_deny:
                denied.append(f"{host}:{port} ({decision.reason})")
    if not denied:
        return None
    return "not allowed by the given policy: " + ", ".join(denied)


def _address_target(address: str, port: int) -> Target:
    return Target(host=None, port=port, address=ipaddress.ip_address(address))


def _target_text(event: Event) -> str:
    target = event.host or event.address or "?"
    if event.kind is Kind.DNS:
        return f"{target} {event.qtype or ''}".rstrip()
    if event.port is not None:
        target += f":{event.port}"
    if event.method:
        target = f"{event.method} {target}{event.path or ''}"
    return target


def _rule_text(rule: Rule) -> str:
    return str(rule.host if rule.host is not None else rule.cidr)


# -- YAML ---------------------------------------------------------------------------------


def render_yaml(
    rules: Sequence[Suggested],
    *,
    sessions: Sequence[str],
    since: float | None,
    review_of: tuple[str, Review] | None = None,
) -> str:
    """The suggested policy as YAML that `corridor.policy.load_policy` reads, with comments."""
    lines = ["# corridor suggest: the smallest policy that allows what was used"]
    span = f"since {_minute(since)}" if since is not None else "all recorded"
    lines.append(f"# from {len(sessions)} session{'' if len(sessions) == 1 else 's'} ({span})")
    if sessions:
        lines.append(f"#   {sessions[0]} .. {sessions[-1]}")
    lines.append("# each rule: uses (connections), sessions, last use")
    lines.append("version: 1")
    if not rules:
        lines.append("allow: []  # nothing was used")
    else:
        lines.append("allow:")
        for suggested in rules:
            lines.extend(_rule_lines(suggested))
    if review_of is not None:
        lines.extend(_review_lines(*review_of))
    return "\n".join(lines) + "\n"


def _rule_lines(s: Suggested) -> list[str]:
    usage = s.usage
    count = len(usage.sessions)
    comment = (
        f"  # {usage.uses} use{'' if usage.uses == 1 else 's'} in {count} "
        f"session{'' if count == 1 else 's'}, last {_minute(usage.last)}"
    )
    out = [comment]
    if len(s.covers) > 1:
        out.append(f"  # covers {_comment(', '.join(s.covers))}")
    if s.note:
        out.append(f"  # {_comment(s.note)}")
    rule = s.rule
    first = f"host: {_quote(rule.host)}" if rule.host is not None else f"cidr: {rule.cidr}"
    out.append(f"  - {first}")
    out.append(f"    ports: [{', '.join(str(p) for p in rule.ports or [])}]")
    if rule.methods:
        out.append(f"    methods: [{', '.join(rule.methods)}]")
    if rule.paths:
        out.append(f"    paths: [{', '.join(_quote(p) for p in rule.paths)}]")
    if rule.inspect:
        out.append("    inspect: true")
    return out


def _review_lines(display: str, found: Review) -> list[str]:
    out = ["", f"# review of {_comment(display)}:"]
    if found.unused:
        out.append("#   rules never used (candidates to remove):")
        for rule in found.unused:
            what = _rule_text(rule)
            ports = f" ports {list(rule.ports)}" if rule.ports else ""
            out.append(f"#     {_comment(rule.origin or what)}: {_comment(what)}{ports}")
    else:
        out.append("#   every allow rule was used")
    if found.recurring:
        out.append("#   refusals that recur (candidates to review):")
        for r in found.recurring:
            out.append(
                f"#     {_comment(r.target)} ({r.kind}, {r.decision}): {_comment(r.reason)} - "
                f"{r.uses} times in {r.sessions} session{'' if r.sessions == 1 else 's'}, "
                f"last {_minute(r.last)}"
            )
    else:
        out.append("#   no refusal recurs")
    return out


def _quote(text: str | None) -> str:
    """A YAML double-quoted scalar (JSON string syntax is valid YAML)."""
    return json.dumps(text)


def _comment(text: str) -> str:
    """Recorded text inside a YAML comment: one line, control characters escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _minute(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str) -> float:
    """`14d`, `12h`, `2w`, `30m`, `90s` -> seconds. Raises ValueError."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration")
    return int(match.group(1)) * _UNITS[match.group(2)]
