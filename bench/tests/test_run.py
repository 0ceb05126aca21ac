"""The harness's choices that shape the figures: which routes run, and which attempt of a
disturbed cell is kept."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench import run
from bench.peers import Peer


def _peer(name: str) -> Peer:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return Peer(name, proc, 1)


def test_routes_skip_peers_that_are_not_running():
    running = {name: _peer(name) for name in ("squid", "corridor")}
    got = {(r.measure, r.target, r.path) for r in run.routes(running)}
    assert got == {
        ("https", "direct", "direct"),
        ("https", "squid", "connect"),
        ("https", "corridor", "connect"),
        ("http", "direct", "direct"),
        ("http", "squid", "absolute"),
        ("http", "corridor", "absolute"),
    }


def test_inspected_and_plain_http_go_through_the_intercepting_mitmproxy():
    running = {name: _peer(name) for name in ("mitmproxy", "mitmproxy-intercept")}
    by_measure = {(r.measure, r.target): r.peer for r in run.routes(running)}
    assert by_measure[("https", "mitmproxy")] == "mitmproxy"
    assert by_measure[("http", "mitmproxy")] == "mitmproxy-intercept"
    assert by_measure[("https-inspected", "mitmproxy")] == "mitmproxy-intercept"


@pytest.mark.parametrize(
    ("first", "second", "kept"),
    [
        ([0.1, 0.9], [0.5, 0.2], [1, 2]),
        ([0.3, 0.3], [0.3, 0.3], [1, 1]),
        ([0.5], [0.1, 0.1], [2, 2]),
    ],
    ids=["cell-by-cell", "tie-keeps-first", "incomplete-attempt-loses"],
)
def test_least_disturbed_attempt_is_kept(first, second, kept):
    a = [{"others_cores": x, "attempt": 1} for x in first]
    b = [{"others_cores": x, "attempt": 2} for x in second]
    assert [r["attempt"] for r in run._least_disturbed(a, b)] == kept


@pytest.mark.parametrize(
    ("others", "disturbed"),
    [([0.0, 0.25], False), ([0.0, 0.26], True), ([], False)],
    ids=["at-limit", "over-limit", "empty"],
)
def test_disturbed(others, disturbed):
    assert run._disturbed([{"others_cores": x} for x in others]) is disturbed
