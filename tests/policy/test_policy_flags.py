"""`--allow` values read without the model: the same rules, record, hash and refusals."""

from __future__ import annotations

import subprocess
import sys

import pytest

from corridor.policy import decide, policy_from_flags, policy_hash, policy_to_dict
from corridor.policy.compiled import compile_policy
from corridor.policy.decide import Target
from corridor.policy.flags import (
    PolicyError,
    parse_allow_flag,
    policy_from_allow_flags,
    record_hash,
    record_of,
)

FLAG_SETS = [
    pytest.param([], id="none"),
    pytest.param(["api.example.test"], id="host"),
    pytest.param(["API.Example.TEST."], id="host-normalised"),
    pytest.param(["*.example.test", "**.other.test:8443"], id="wildcards"),
    pytest.param(["10.0.0.1", "10.20.0.0/16:5432"], id="ipv4"),
    pytest.param(["2001:db8::1", "[2001:db8::1]:443", "[2001:db8::]/48:22"], id="ipv6"),
    pytest.param(["bücher.test"], id="idn"),
    pytest.param(["a.test", "a.test:80", "b.test:1", "c.test:65535"], id="ports"),
]

BAD_VALUES = [
    pytest.param("", "empty value", id="empty"),
    pytest.param("https://a.test/", "a URL is not a host", id="url"),
    pytest.param("a.test:0", "0 is not a port (1-65535)", id="port-zero"),
    pytest.param("a.test:99999", "99999 is not a port (1-65535)", id="port-big"),
    pytest.param("a.test:x", "'x' is not a port", id="port-text"),
    pytest.param("[2001:db8::1", "'[' without ']'", id="bracket"),
    pytest.param("[a.test]:443", "'a.test' is not an IPv6 address", id="bracket-name"),
    pytest.param("10.0.0.1/8", "'10.0.0.1/8' has bits set after the prefix", id="cidr-bits"),
    pytest.param("*.test", "which is broad", id="broad-suffix"),
    pytest.param("10.0.0.0/7", "10.0.0.0/7 is wider than a /8, which is broad", id="broad-v4"),
    pytest.param("a..test", "", id="bad-host"),
]


@pytest.mark.parametrize("values", FLAG_SETS)
def test_the_record_and_hash_are_the_models(values: list[str]) -> None:
    model = policy_from_flags(values, None)
    quick = policy_from_allow_flags(values)
    assert record_of(quick) == policy_to_dict(model)
    assert record_hash(record_of(quick)) == policy_hash(model)
    assert quick == compile_policy(model)


@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_mode(mode: str) -> None:
    model = policy_from_flags(["a.test"], None).model_copy(update={"mode": mode})
    quick = policy_from_allow_flags(["a.test"], mode)
    assert record_of(quick) == policy_to_dict(model)
    assert policy_hash(model) == record_hash(record_of(quick))


@pytest.mark.parametrize(("value", "words"), BAD_VALUES)
def test_refused_alike(value: str, words: str) -> None:
    with pytest.raises(PolicyError) as quick:
        parse_allow_flag(value)
    with pytest.raises(PolicyError) as model:
        policy_from_flags([value], None)
    assert quick.value.message == model.value.message
    assert quick.value.hint == model.value.hint
    assert words in quick.value.message
    assert quick.value.message.startswith("--allow ")


def test_decisions_alike() -> None:
    values = ["a.test", "*.b.test:8443", "10.1.0.0/16:5432"]
    model, quick = policy_from_flags(values, None), policy_from_allow_flags(values)
    for host, port in [("a.test", 443), ("a.test", 22), ("x.b.test", 8443), ("b.test", 8443),
                       ("10.1.2.3", 5432), ("10.2.0.1", 5432), ("c.test", 443)]:  # fmt: skip
        assert decide(model, Target(host, port)) == decide(quick, Target(host, port))


def test_no_model_is_loaded() -> None:
    code = (
        "import sys, corridor.policy.flags as f; "
        "f.record_of(f.policy_from_allow_flags(['a.test']));"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'pydantic', 'yaml', 'click'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
