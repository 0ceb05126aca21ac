"""The gateway process: ready, serve, stop, report; every way it can fail; what it loads."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest
from tests.gateway.loopback import loopback_listeners

from corridor.audit import Kind, read_events
from corridor.gateway.process import (
    GatewayFailed,
    GatewayProcess,
    describe_status,
    gateway_config,
)
from corridor.policy import policy_from_flags

SESSION = "20261127T080000Z-0a1b2c3d"


def _config(tmp_path: Path) -> dict:
    policy = policy_from_flags(["allowed.test"], None)
    return gateway_config(session=SESSION, db=tmp_path / "events.db", policy=policy)


def _spawn(tmp_path: Path, config: dict | None = None) -> GatewayProcess:
    return GatewayProcess.spawn(config or _config(tmp_path))


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
    config = _config(tmp_path)
    config["version"] = 99  # a child from another installation
    gateway = _spawn(tmp_path, config)
    try:
        _hand_over(gateway)
        with pytest.raises(GatewayFailed) as caught:
            gateway.wait_ready()
    finally:
        gateway.close()
    assert caught.value.message.startswith(
        "the gateway did not start: the gateway was started with a configuration it cannot read"
    )
    assert "exited 1" in caught.value.message


def test_the_gateway_loads_only_what_it_serves_with(tmp_path: Path) -> None:
    """No policy models, CLI, renderers or YAML; no cryptography without inspection:
    most of a Python process's memory is what it imported."""
    gateway = _spawn(tmp_path)
    try:
        _hand_over(gateway)
        gateway.wait_ready()
        maps = Path(f"/proc/{gateway.pid}/maps").read_text()
        gateway.stop(timeout=10)
    finally:
        gateway.close()
    assert "_ssl" in maps  # the maps are the child's: it serves TLS-capable sockets
    for library in ("pydantic_core", "_yaml", "cryptography", "_rust.abi3"):
        assert library not in maps


def test_the_working_directory_is_not_on_the_gateways_import_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """corridor runs in the workspace, which the agent writes: a module planted there
    must not be imported by the gateway, which holds the credentials."""
    planted = tmp_path / "planted"
    (planted / "corridor").mkdir(parents=True)
    marker = tmp_path / "imported"
    code = f"open({str(marker)!r}, 'w').close()\n"
    for name in ("asyncio.py", "json.py", "h11.py", "corridor/__init__.py"):
        (planted / name).write_text(code)
    monkeypatch.chdir(planted)
    monkeypatch.setenv("PYTHONPATH", str(planted))
    gateway = _spawn(tmp_path)
    try:
        _hand_over(gateway)
        gateway.wait_ready()
        gateway.stop(timeout=10)
    finally:
        gateway.close()
    assert not marker.exists()


@pytest.mark.parametrize("configured", [True, False], ids=["configured", "not-configured"])
def test_stopped_before_the_sandbox_started(tmp_path: Path, configured: bool) -> None:
    """`corridor run` starts the gateway first: a user error or a sandbox that did not
    start ends it, before or after it got its document."""
    gateway = _spawn(tmp_path) if configured else GatewayProcess.spawn()
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
