"""corridor's gateway on loopback listeners, without a sandbox: the proxy rows.

    python -m bench.gateway_host --state-dir DIR [--no-audit]
                                 [--inspect CA_OUT --upstream-ca CA]

Runs `corridor.gateway.server.Gateway` exactly as `corridor run` does (same policy
type, same event writer, same event loop setup as session.py), but on listeners this
process binds on 127.0.0.1 instead of sockets handed over by the sandbox's init. Prints
one JSON line with the ports once it serves; SIGTERM stops it and flushes the log.
`--no-audit` replaces the event writer by a function that drops events: the difference
between the two is what the audit costs per connection.

`--uvloop` runs the same gateway on uvloop's event loop instead of asyncio's (to
evaluate it; uvloop must be importable): `BENCH_UVLOOP=1` in the environment does the
same for gateways the harness starts.

`--inspect CA_OUT` runs the gateway with a policy that inspects the upstream (`inspect:
true`) and a session CA whose certificate goes to CA_OUT for the load client to trust;
`--upstream-ca` is the CA the gateway verifies the upstream with. A gateway that cannot
inspect yet prints {"error": ...} and exits 3.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import resource
import signal
import socket
import sys
from pathlib import Path

from bench.config import CORRIDOR_ALLOW, INSPECT_POLICY
from corridor.audit import EventWriter, new_session_id
from corridor.gateway.server import Gateway
from corridor.policy import load_policy, policy_from_flags

LISTEN_BACKLOG = 4096  # a burst of 64 concurrent connects must never wait on the backlog
NO_INSPECTION = 3  # exit code: this gateway cannot inspect TLS (yet)


class NoInspection(Exception):
    """The gateway in this tree has no TLS inspection."""


def inspection_options(state_dir: Path, ca_out: Path, upstream_ca: Path | None) -> dict:
    """Gateway keyword arguments for an inspecting gateway; writes its CA to `ca_out`."""
    try:
        from corridor.gateway.tlsca import SessionCA
    except ImportError as e:
        raise NoInspection(f"no corridor.gateway.tlsca ({e})") from None
    fields = {f.name for f in dataclasses.fields(Gateway)}
    if "ca" not in fields:
        raise NoInspection("Gateway takes no session CA")
    ca = SessionCA.generate("bench")
    ca_out.write_bytes(ca.cert_pem())
    options: dict = {"ca": ca}
    if upstream_ca is not None and "upstream_cas" in fields:
        options["upstream_cas"] = (upstream_ca,)
    return options


def _listeners() -> dict[str, socket.socket]:
    out = {}
    for name in ("transparent", "proxy", "dns_tcp"):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(LISTEN_BACKLOG)
        out[name] = s
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    out["dns_udp"] = u
    return out


def _raise_fd_limit() -> None:
    # 1,000 idle tunnels hold 2,000 sockets; `corridor run` inherits the caller's limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(state_dir: Path, audit: bool, inspect: dict | None = None) -> int:
    if inspect is None:
        policy = policy_from_flags(list(CORRIDOR_ALLOW), None)
    else:
        path = state_dir / "inspect-policy.yaml"
        path.write_text(INSPECT_POLICY)
        policy = load_policy(path)
    writer = EventWriter(state_dir / "events.db") if audit else None
    if writer is not None:
        writer.flush()
    gateway = Gateway(
        policy=policy,
        session=new_session_id(),
        emit=writer.emit if writer is not None else (lambda event: None),
        **(inspect or {}),
    )
    listeners = _listeners()
    await gateway.start(listeners)
    ports = {name: s.getsockname()[1] for name, s in listeners.items()}
    print(json.dumps(ports), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await gateway.stop()
    if writer is not None:
        writer.close()
        print(f"events written: {writer.written}", file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--no-audit", action="store_true")
    parser.add_argument("--inspect", type=Path, metavar="CA_OUT")
    parser.add_argument("--upstream-ca", type=Path)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    _raise_fd_limit()
    args.state_dir.mkdir(parents=True, exist_ok=True)
    inspect = None
    if args.inspect is not None:
        try:
            inspect = inspection_options(args.state_dir, args.inspect, args.upstream_ca)
        except NoInspection as e:
            print(json.dumps({"error": str(e)}), flush=True)
            return NO_INSPECTION
    # The gateway process runs with asyncio.run: the same loop here, unless uvloop is asked.
    main_coro = serve(args.state_dir, audit=not args.no_audit, inspect=inspect)
    if args.uvloop or os.environ.get("BENCH_UVLOOP", "") not in ("", "0"):
        import uvloop

        return uvloop.run(main_coro)
    return asyncio.run(main_coro)


if __name__ == "__main__":
    sys.exit(main())
