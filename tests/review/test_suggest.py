"""Review and tighten: the smallest policy for what was used, and the review of a policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from corridor.audit.events import Event, Kind
from corridor.policy import Target, decide, load_policy
from corridor.review.suggest import (
    RECURRING_REFUSALS,
    SIBLINGS_TO_COLLAPSE,
    Suggested,
    parse_since,
    render_yaml,
    review,
    suggest,
)

T0 = 1795749300.0


def conn(
    host: str | None,
    port: int = 443,
    decision: str = "allow",
    session: str = "s1",
    ts: float = T0,
    address: str | None = None,
    reason: str = "allowed by rule",
) -> Event:
    return Event(
        session, Kind.CONNECTION, ts, decision=decision, host=host, port=port, address=address,
        protocol="tls", reason=reason,
    )  # fmt: skip


def http(host: str, method: str, path: str, protocol: str = "http", port: int = 80) -> Event:
    return Event("s1", Kind.HTTP, T0, decision="allow", host=host, port=port, method=method,
                 path=path, protocol=protocol)  # fmt: skip


def rules_of(found: list[Suggested]) -> list[dict]:
    return [r.rule.model_dump(mode="json", exclude_none=True, exclude_defaults=True) for r in found]


CASES = [
    ("one-host-one-port", [conn("api.test")], [{"host": "api.test", "ports": [443]}]),
    ("ports-are-listed", [conn("api.test"), conn("api.test", 80), conn("API.test.")],
     [{"host": "api.test", "ports": [80, 443]}]),
    ("refusals-are-not-uses", [conn("api.test"), conn("evil.test", decision="deny")],
     [{"host": "api.test", "ports": [443]}]),
    ("audit-mode-would-deny-is-a-use", [conn("new.test", decision="would-deny")],
     [{"host": "new.test", "ports": [443]}]),
    ("siblings-collapse", [conn(f"{n}.cdn.example.test") for n in ("a", "b", "c")],
     [{"host": "*.cdn.example.test", "ports": [443]}]),
    ("siblings-and-apex-collapse",
     [conn("example.test"), *[conn(f"{n}.example.test") for n in ("a", "b", "c")]],
     [{"host": "**.example.test", "ports": [443]}]),
    ("two-siblings-stay-apart", [conn("a.example.test"), conn("b.example.test")],
     [{"host": "a.example.test", "ports": [443]}, {"host": "b.example.test", "ports": [443]}]),
    ("siblings-on-other-ports-stay-apart",
     [conn("a.example.test"), conn("b.example.test"), conn("c.example.test", 8443)],
     [{"host": "a.example.test", "ports": [443]}, {"host": "b.example.test", "ports": [443]},
      {"host": "c.example.test", "ports": [8443]}]),
    ("never-a-wildcard-on-a-top-level-domain", [conn(f"{n}.test") for n in ("a", "b", "c")],
     [{"host": f"{n}.test", "ports": [443]} for n in ("a", "b", "c")]),
    ("never-a-wildcard-on-a-public-suffix", [conn(f"{n}.github.io") for n in ("a", "b", "c")],
     [{"host": f"{n}.github.io", "ports": [443]} for n in ("a", "b", "c")]),
    ("an-address-without-a-name", [conn(None, 5432, address="192.0.2.7")],
     [{"cidr": "192.0.2.7/32", "ports": [5432]}]),
    ("methods-and-paths", [conn("api.test", 80), http("api.test", "GET", "/v1/items/1"),
                           http("api.test", "GET", "/v1/items/2?q=1"),
                           http("api.test", "post", "/v1/orders")],
     [{"host": "api.test", "ports": [80], "methods": ["GET", "POST"], "paths": ["/v1/"]}]),
    ("inspected-requests-keep-inspection", [conn("api.test"), http("api.test", "GET", "/a/b",
                                                                   "https", 443)],
     [{"host": "api.test", "ports": [443], "methods": ["GET"], "paths": ["/a/"], "inspect": True}]),
]  # fmt: skip


@pytest.mark.parametrize(("events", "expected"), [pytest.param(c[1], c[2], id=c[0]) for c in CASES])
def test_suggest(events: list[Event], expected: list[dict]) -> None:
    assert sorted(rules_of(suggest(events)), key=str) == sorted(expected, key=str)


def test_thresholds_are_what_the_tables_assume() -> None:
    assert SIBLINGS_TO_COLLAPSE == 3 and RECURRING_REFUSALS == 2


def test_paths_shorten_until_few_enough() -> None:
    events = [conn("api.test", 80)] + [http("api.test", "GET", f"/r{i}/x/y") for i in range(20)]
    (found,) = suggest(events)
    assert found.rule.paths is None  # twenty top-level directories: any path


def test_a_path_with_characters_a_policy_rejects_is_cut() -> None:
    events = [conn("api.test", 80), http("api.test", "GET", "/files/a b/c")]
    (found,) = suggest(events)
    assert found.rule.paths == ["/files/"]


def test_usage_counts(tmp_path: Path) -> None:
    events = [
        conn("api.test", session="s1", ts=T0),
        conn("api.test", session="s2", ts=T0 + 3600),
        conn("api.test", session="s2", ts=T0 + 60),
    ]
    (found,) = suggest(events)
    assert (found.usage.uses, found.usage.sessions, found.usage.last) == (
        3,
        {"s1", "s2"},
        T0 + 3600,
    )


def test_the_suggested_policy_loads_and_allows_what_was_used(tmp_path: Path) -> None:
    events = [
        conn("api.test"), conn("a.cdn.example.test"), conn("b.cdn.example.test"),
        conn("c.cdn.example.test"), conn(None, 5432, address="2001:db8::5"),
        conn("weird\nhost.test"),  # not a host name: never becomes a rule, nor breaks the file
    ]  # fmt: skip
    text = render_yaml(suggest(events), sessions=["s1"], since=T0 - 86400)
    path = tmp_path / "suggested.yaml"
    path.write_text(text)
    policy = load_policy(path)
    for host, port in (("api.test", 443), ("b.cdn.example.test", 443), ("d.cdn.example.test", 443)):
        assert decide(policy, Target(host=host, port=port)).allowed
    assert not decide(policy, Target(host="api.test", port=80)).allowed
    assert not decide(policy, Target(host="cdn.example.test", port=443)).allowed
    assert "  # covers a.cdn.example.test, b.cdn.example.test, c.cdn.example.test" in text
    assert "  - cidr: 2001:db8::5/128\n    ports: [5432]" in text


def test_review_of_an_existing_policy(tmp_path: Path) -> None:
    existing_file = tmp_path / "policy.yaml"
    existing_file.write_text(
        "version: 1\n"
        "allow:\n"
        "  - host: api.test\n"
        "    ports: [443]\n"
        "  - host: '*.old.test'\n"
        "deny:\n"
        "  - host: evil.test\n"
    )
    existing = load_policy(existing_file)
    events = [
        conn("api.test", session="s1"),
        conn("new.test", decision="would-deny", session="s1", reason="no rule allows this host"),
        conn("evil.test", decision="deny", session="s1", reason="denied by rule", ts=T0 + 1),
        conn("evil.test", decision="deny", session="s2", reason="denied by rule", ts=T0 + 2),
        conn("once.test", decision="deny", session="s2", reason="no rule allows this host"),
    ]
    found = review(events, existing)
    assert [r.host for r in found.unused] == ["*.old.test"]
    assert [(r.target, r.reason, r.uses, r.sessions) for r in found.recurring] == [
        ("evil.test:443", "denied by rule", 2, 2)
    ]
    suggested = suggest(events, existing)
    notes = {s.covers[0]: s.note for s in suggested}
    assert notes == {
        "api.test": None,
        "new.test": "not allowed by the given policy: new.test:443 (no rule allows this host)",
    }
    text = render_yaml(suggested, sessions=["s1", "s2"], since=None,
                       review_of=(str(existing_file), found))  # fmt: skip
    assert f"#     {existing_file}:5 allow[1]: *.old.test" in text
    assert "#     evil.test:443 (connection, deny): denied by rule - 2 times in 2 sessions" in text
    (tmp_path / "out.yaml").write_text(text)
    load_policy(tmp_path / "out.yaml")


def test_nothing_used() -> None:
    text = render_yaml([], sessions=[], since=T0)
    assert "allow: []  # nothing was used" in text


@pytest.mark.parametrize(
    ("text", "seconds"), [("14d", 14 * 86400), ("12h", 43200), ("2w", 1209600), ("90s", 90)]
)
def test_parse_since(text: str, seconds: int) -> None:
    assert parse_since(text) == seconds


@pytest.mark.parametrize("text", ["", "14", "d", "1.5d", "-1d", "14 days"])
def test_parse_since_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_since(text)
