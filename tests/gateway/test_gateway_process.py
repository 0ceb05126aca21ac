"""The forked gateway process: ready, serve, stop, report; and every way it can fail."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest
from tests.gateway.loopback import loopback_listeners

from corridor.audit import EventWriter, Kind, read_events
from corridor.errors import UserError
from corridor.gateway.process import GatewayFailed, GatewayProcess, describe_status
from corridor.gateway.server import Gateway
from corridor.policy import policy_from_flags

SESSION = "20261127T080000Z-0a1b2c3d"


def _spawn(tmp_path: Path, build=None) -> GatewayProcess:
    policy = policy_from_flags(["allowed.test"], None)

    def default_build(emit):
        return Gateway(policy=policy, session=SESSION, emit=emit)

    db = tmp_path / "events.db"
    return GatewayProcess.spawn(build or default_build, lambda: EventWriter(db))


def _hand_over(gateway: GatewayProcess) -> dict[str, socket.socket]:
    listeners = loopback_listeners()
    addresses = {name: s.getsockname() for name, s in listeners.items()}
    gateway.hand_over(listeners)
    for s in listeners.values():
        s.close()  # as session.py does: the child holds the only copies
    return addresses


def test_serves_then_stops_and_reports_its_counters(tmp_path: Path) -> None:
    gateway = _spawn(tmp_path)
    try:
        addresses = _hand_over(gateway)
        gateway.wait_ready()
        with socket.create_connection(addresses["proxy"], timeout=5) as c:
            c.sendall(b"CONNECT denied.test:443 HTTP/1.1\r\nHost: denied.test:443\r\n\r\n")
            assert c.recv(100).startswith(b"HTTP/1.1 403")
        end = gateway.stop()
    finally:
        gateway.close()
    assert end.error is None
    assert end.stats is not None and end.stats["blocked"] == 1
    events = read_events(tmp_path / "events.db", session=SESSION)
    assert [e.host for e in events if e.kind is Kind.CONNECTION] == ["denied.test"]
    assert not any(e.kind is Kind.CHECKPOINT for e in events)  # the parent seals, not it


def test_a_gateway_that_cannot_be_built_says_why(tmp_path: Path) -> None:
    def broken(emit):
        raise UserError("no usable policy table")

    gateway = _spawn(tmp_path, broken)
    try:
        _hand_over(gateway)
        with pytest.raises(GatewayFailed) as caught:
            gateway.wait_ready()
    finally:
        gateway.close()
    assert caught.value.message.startswith("the gateway did not start: no usable policy table")
    assert "exited 1" in caught.value.message


def test_stopped_before_the_sandbox_started(tmp_path: Path) -> None:
    gateway = _spawn(tmp_path)
    try:
        end = gateway.stop(timeout=10)
    finally:
        gateway.close()
    assert end.stats is None
    assert end.error is not None and end.error.startswith("the sandbox did not start")


def test_killed_gateway_is_reported_in_words(tmp_path: Path) -> None:
    gateway = _spawn(tmp_path)
    try:
        _hand_over(gateway)
        gateway.wait_ready()
        os.kill(gateway.pid, signal.SIGKILL)
        end = gateway.wait(deadline=time.monotonic() + 5)
    finally:
        gateway.close()
    assert end.stats is None
    assert end.error == "the gateway process was killed by SIGKILL (signal 9)"


def test_the_child_is_named_for_ps(tmp_path: Path) -> None:
    gateway = _spawn(tmp_path)
    try:
        deadline = time.monotonic() + 5
        while Path(f"/proc/{gateway.pid}/comm").read_text().strip() != "corridor-gw":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        gateway.stop(timeout=10)
    finally:
        gateway.close()


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (0, "the gateway process ended"),
        (3 << 8, "the gateway process exited 3"),
        (signal.SIGTERM, "the gateway process was killed by SIGTERM (signal 15)"),
        (77, "the gateway process was killed by signal 77"),
    ],
)
def test_describe_status(status: int, words: str) -> None:
    assert describe_status(status) == words
