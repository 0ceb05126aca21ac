import os
import shutil
import subprocess

import pytest

from corridor.sandbox.nft import Ports, parse_counters, ruleset


def test_ruleset_redirects_tcp_and_dns_and_drops_the_rest():
    text = ruleset(Ports(transparent=15001, proxy=3128, dns=53))
    assert "meta l4proto tcp redirect to :15001" in text
    assert "th dport 53 redirect to :53" in text
    # DNS must be redirected before the catch-all TCP rule, or TCP DNS would be sniffed.
    assert text.index("th dport 53") < text.index("meta l4proto tcp redirect")
    assert "policy drop;" in text
    assert "ip daddr { 127.0.0.0/8, 198.19.255.254 } accept" in text
    assert "ip6 daddr { ::1, fd63:6f72:7269:646f:ffff:ffff:ffff:fffe } accept" in text


def test_every_drop_is_counted_by_kind_then_logged_under_a_rate_limit():
    text = ruleset(Ports(), log_group=7)
    assert "meta l4proto udp counter name dropped_udp goto drop_logged" in text
    assert "meta l4proto { icmp, ipv6-icmp } counter name dropped_icmp goto drop_logged" in text
    assert "counter name dropped_other goto drop_logged" in text
    assert "limit rate 50/second burst 100 packets log group 7 snaplen 128\n    drop" in text
    # Counting comes before the limit: a flood is counted whole.
    assert text.index("counter name dropped_udp") < text.index("limit rate")


def test_without_a_log_group_drops_are_only_counted():
    text = ruleset(Ports(), log_group=None)
    assert "log group" not in text and "limit rate" not in text
    assert "chain drop_logged {\n    drop\n  }" in text
    assert "counter name dropped_udp goto drop_logged" in text


NFT_JSON = (
    '{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}, '
    '{"counter": {"family": "inet", "name": "dropped_udp", "table": "corridor", '
    '"handle": 2, "packets": 7, "bytes": 203}}, '
    '{"counter": {"family": "inet", "name": "dropped_icmp", "table": "corridor", '
    '"handle": 3, "packets": 0, "bytes": 0}}, '
    '{"counter": {"family": "inet", "name": "dropped_udp", "table": "other", '
    '"handle": 2, "packets": 99, "bytes": 1}}, '
    '{"counter": {"family": "inet", "name": "mine", "table": "corridor", "packets": 5}}]}'
)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("nft's output", NFT_JSON, {"dropped_udp": 7, "dropped_icmp": 0}),
        ("not JSON", "Error: No such file or directory", {}),
        ("empty", "", {}),
        ("not an object", "[1, 2]", {}),
        ("nftables not a list", '{"nftables": 3}', {}),
        ("packets not a number", NFT_JSON.replace('"packets": 7', '"packets": "7"'),
         {"dropped_icmp": 0}),
    ],
)  # fmt: skip
def test_parse_counters(name, text, expected):
    assert parse_counters(text) == expected


@pytest.mark.parametrize("log_group", [7, None])
def test_the_kernel_accepts_the_ruleset(log_group):
    # `nft -c` checks against the kernel and applies nothing.
    nft = shutil.which("nft", path="/usr/sbin:/sbin:/usr/bin")
    if nft is None or os.geteuid() != 0:
        pytest.skip("needs nft and root")
    r = subprocess.run(
        [nft, "-c", "-f", "-"], input=ruleset(Ports(), log_group), text=True, capture_output=True
    )
    assert r.returncode == 0, r.stderr
