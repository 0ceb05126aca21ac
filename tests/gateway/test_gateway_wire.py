"""What `corridor run` hands the gateway process as data: the broker, the session CA, and
a Gateway built on a compiled policy. Each read back must serve exactly as the original."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import pytest
from cryptography import x509

from corridor.gateway.credentials import (
    BASE62,
    EXPIRED,
    Broker,
    CompiledCredential,
    base62_checksum,
    parse_credentials,
)
from corridor.gateway.server import Gateway
from corridor.gateway.tlsca import SessionCA
from corridor.policy import Policy, Target
from corridor.policy.compiled import CompiledPolicy, compile_policy

# Real values are built at run time (a literal token in the tree would trip scanners).
RNG = random.Random(11)
GH_BODY = "".join(RNG.choice(BASE62) for _ in range(30))
GH_REAL = "ghp_" + GH_BODY + base62_checksum(GH_BODY)
INDEX_REAL = "index-" + "".join(RNG.choice(BASE62) for _ in range(24))
KEY_REAL = "k" + "".join(RNG.choice("0123456789abcdef") for _ in range(39))
SHORT_REAL = "pw12"  # shorter than MIN_SCAN_LENGTH: injected, never searched for
HOST_ENV = {"GH": GH_REAL, "INDEX": INDEX_REAL, "KEY": KEY_REAL, "SHORT": SHORT_REAL}
ENTRIES: list[dict[str, Any]] = [
    {
        "name": "GITHUB_TOKEN",
        "from": "env:GH",
        "hosts": ["api.github.test", "github.test"],
        "inject": ["bearer", "basic"],
        "ttl": "30m",
    },
    {
        "name": "INDEX_PASSWORD",
        "from": "env:INDEX",
        "hosts": ["index.test"],
        "inject": "basic",
        "username": "ci-bot",
    },
    {
        "name": "STAGING_KEY",
        "from": "env:KEY",
        "hosts": ["*.staging.test"],
        "inject": "header:X-Api-Key",
        "template": "Key {value}",
    },
    {"name": "SHORT_PW", "from": "env:SHORT", "hosts": ["short.test"], "inject": "basic"},
]
START = 1000.0
TTL = 30 * 60
HOSTS = ("api.github.test", "GitHub.Test.", "index.test", "a.staging.test", "evil.test", "1.2.3.4")


def basic(user: str | bytes, password: str | bytes) -> bytes:
    u = user.encode() if isinstance(user, str) else user
    p = password.encode() if isinstance(password, str) else password
    return b"Basic " + base64.b64encode(u + b":" + p)


@pytest.fixture
def pair() -> tuple[Broker, Broker]:
    """The parent's broker, and the one the gateway reads from the wire."""
    broker = Broker.start(parse_credentials(ENTRIES), START, HOST_ENV)
    wire = json.loads(json.dumps(broker.to_wire()))
    return broker, Broker.from_wire(wire)


def requests(broker: Broker) -> list[list[tuple[bytes, bytes]]]:
    """Header sets that carry each placeholder and each real value every way they can go."""
    out: list[list[tuple[bytes, bytes]]] = [[(b"accept", b"*/*")]]
    env = broker.sandbox_env()
    for secret in [*env.values(), GH_REAL, INDEX_REAL, KEY_REAL]:
        for value in (
            b"Bearer " + secret.encode(),
            basic("x-access-token", secret),
            basic(secret, ""),
            b"Key " + secret.encode(),
        ):
            out.append([(b"authorization", value), (b"x-api-key", value)])
    return out


def test_the_broker_survives_the_wire(pair: tuple[Broker, Broker]):
    broker, wired = pair
    assert wired.sandbox_env() == broker.sandbox_env()
    assert wired.describe() == broker.describe()
    assert wired.bound_patterns() == broker.bound_patterns()
    assert [c.expires for c in wired.credentials] == [START + TTL, None, None, None]
    assert [c.spec for c in wired.credentials] == [c.spec for c in broker.credentials]
    assert all(isinstance(c.spec, CompiledCredential) for c in wired.credentials)
    assert wired.warnings == broker.warnings and len(wired.warnings) == 1
    assert repr(wired) == repr(broker)


@pytest.mark.parametrize("now", [START, START + TTL - 0.001, START + TTL])
def test_the_wired_broker_injects_the_same(pair: tuple[Broker, Broker], now: float):
    broker, wired = pair
    swapped = refused = 0
    for host in HOSTS:
        for headers in requests(broker):
            want, got = broker.inject(headers, host, now), wired.inject(headers, host, now)
            assert (got.headers, got.used, got.refusal) == (want.headers, want.used, want.refusal)
            swapped += bool(want.used)
            refused += bool(want.refusal and want.refusal.startswith(EXPIRED))
    assert swapped > 0 and (refused > 0) == (now >= START + TTL)


def test_the_wired_broker_scans_the_same(pair: tuple[Broker, Broker]):
    broker, wired = pair
    found = 0
    for host in HOSTS:
        assert wired.scans(host) == broker.scans(host)
        for headers in requests(broker):
            body = b"&".join(value for _, value in headers)
            want = broker.scan(host, "/upload", headers, body)
            assert wired.scan(host, "/upload", headers, body) == want
            scanner_w, scanner_b = wired.body_scanner(host), broker.body_scanner(host)
            assert scanner_w.feed(body) == scanner_b.feed(body)
            found += want is not None
    assert found > 0


def test_the_broker_wire_holds_values_but_its_errors_do_not():
    broker = Broker.start(parse_credentials(ENTRIES[:1]), START, HOST_ENV)
    wire = broker.to_wire()
    assert wire["credentials"][0]["value"] == GH_REAL  # it is meant for a private pipe only
    wire["credentials"][0]["expires"] = "soon"
    with pytest.raises(ValueError, match="expires is not a number") as info:
        Broker.from_wire(wire)
    assert GH_REAL not in str(info.value)


BAD_BROKER_WIRE: dict[str, tuple[Any, str]] = {
    "not a dict": ([], "expected keys 'wire' and 'credentials'"),
    "other version": ({"wire": 2, "credentials": []}, "version 2"),
    "credentials not a list": ({"wire": 1, "credentials": {}}, "shape not understood"),
    "item missing a key": ({"wire": 1, "credentials": [{"spec": {}}]}, "expected keys"),
    "bad spec": (
        {
            "wire": 1,
            "credentials": [{"spec": {}, "placeholder": "p", "value": "v", "expires": None}],
        },
        r"credentials\[0\].spec: expected keys",
    ),
}


@pytest.mark.parametrize(("data", "message"), BAD_BROKER_WIRE.values(), ids=BAD_BROKER_WIRE)
def test_a_malformed_broker_wire_is_refused(data: Any, message: str):
    with pytest.raises(ValueError, match=message):
        Broker.from_wire(data)


def test_an_empty_broker_round_trips():
    wired = Broker.from_wire(json.loads(json.dumps(Broker([]).to_wire())))
    assert wired.credentials == () and wired.sandbox_env() == {}


# ---- the session CA ----------------------------------------------------------------------


def test_the_session_ca_survives_the_wire():
    ca = SessionCA.generate("s-wire")
    wired = SessionCA.from_wire(json.loads(json.dumps(ca.to_wire())))
    assert wired.cert == ca.cert and wired.cert_pem() == ca.cert_pem()
    leaf, _key = wired.mint("api.example.test")
    # The gateway's leaves chain to the CA the sandbox trusts (the parent's certificate).
    leaf.cert.verify_directly_issued_by(ca.cert)
    assert leaf.cert.issuer == ca.cert.subject
    wired.server_context("api.example.test")  # the key loads into OpenSSL too


def test_a_session_ca_wire_with_a_foreign_key_is_refused():
    one, other = SessionCA.generate("one"), SessionCA.generate("other")
    wire = {**one.to_wire(), "cert_pem": other.to_wire()["cert_pem"]}
    with pytest.raises(ValueError, match="does not belong") as info:
        SessionCA.from_wire(wire)
    assert "PRIVATE KEY" not in str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "expected keys"),
        ({"key_pem": 1, "cert_pem": "x"}, "not text"),
        ({"key_pem": "garbage", "cert_pem": "garbage"}, "does not load"),
    ],
    ids=["empty", "not text", "garbage"],
)
def test_a_malformed_session_ca_wire_is_refused(data: Any, message: str):
    with pytest.raises(ValueError, match=message):
        SessionCA.from_wire(data)


def test_the_ca_wire_is_pem_text():
    wire = SessionCA.generate().to_wire()
    assert wire["key_pem"].startswith("-----BEGIN PRIVATE KEY-----")
    assert x509.load_pem_x509_certificate(wire["cert_pem"].encode()).subject is not None


# ---- the gateway on either form of the policy ---------------------------------------------


POLICY = Policy.model_validate(
    {
        "allow": [{"host": "allowed.test", "inspect": True}, {"cidr": "10.9.0.0/16"}],
        "deny": [{"host": "denied.test"}],
        "limits": {"max_connections": 7, "max_bytes_out": 1000},
    }
)


def test_the_gateway_compiles_a_model_policy():
    gw = Gateway(policy=POLICY, session="s", emit=lambda event: None)
    assert isinstance(gw.policy, CompiledPolicy) and gw.policy == compile_policy(POLICY)
    assert gw.limits is not None and (gw.limits.max_connections, gw.limits.max_bytes_out) == (
        7,
        1000,
    )
    d = gw.decide(Target("allowed.test", 443))
    assert d.allowed and d.inspect and d.rule == "allowed.test"
    assert not gw.decide(Target("denied.test", 443)).allowed


def test_the_gateway_keeps_a_compiled_policy():
    compiled = compile_policy(POLICY)
    gw = Gateway(policy=compiled, session="s", emit=lambda event: None)
    assert gw.policy is compiled
    assert gw.decide(Target("allowed.test", 443)) == Gateway(
        policy=POLICY, session="s", emit=lambda event: None
    ).decide(Target("allowed.test", 443))
