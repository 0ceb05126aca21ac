"""corridor's gateway on loopback listeners, without a sandbox: the proxy rows.

    python -m bench.gateway_host --state-dir DIR [--no-audit]
                                 [--inspect CA_OUT --upstream-ca CA]

Starts the gateway process exactly as `corridor run` does (`GatewayProcess.spawn` with the
document `gateway_config` makes: a fresh `corridor-gw` interpreter with its own event
writer), but hands it listeners this process binds on 127.0.0.1 instead of sockets made
by the sandbox's init. Prints one JSON line with the ports and the gateway process's pid
(the process to measure) once it serves; SIGTERM stops it and flushes the log.
`--no-audit` starts the gateway without an event log: the difference between the two is
what the audit costs per connection.

`--inspect CA_OUT` runs the gateway with a policy that inspects the upstream (`inspect:
true`) and a session CA whose certificate goes to CA_OUT for the load client to trust;
`--upstream-ca` is the CA the gateway verifies the upstream with. A gateway that cannot
inspect yet prints {"error": ...} and exits 3.
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import socket
import sys
from pathlib import Path

from bench.config import CORRIDOR_ALLOW, INSPECT_POLICY
from corridor.audit import EventWriter, new_session_id
from corridor.gateway.process import GatewayProcess, gateway_config
from corridor.policy import load_policy, policy_from_flags

LISTEN_BACKLOG = 4096  # a burst of 64 concurrent connects must never wait on the backlog
NO_INSPECTION = 3  # exit code: this gateway cannot inspect TLS (yet)


class _Stop(Exception):
    """SIGTERM or SIGINT: stop the gateway."""


def _stop(_sig: int, _frame: object) -> None:
    raise _Stop


class NoInspection(Exception):
    """The gateway in this tree has no TLS inspection."""


def inspection_options(state_dir: Path, ca_out: Path, upstream_ca: Path | None) -> dict:
    """`gateway_config` keyword arguments for an inspecting gateway; writes its CA to
    `ca_out`."""
    try:
        from corridor.gateway.tlsca import SessionCA
    except ImportError as e:
        raise NoInspection(f"no corridor.gateway.tlsca ({e})") from None
    ca = SessionCA.generate("bench")
    ca_out.write_bytes(ca.cert_pem())
    options: dict = {"ca": ca}
    if upstream_ca is not None:
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


def serve(state_dir: Path, audit: bool, inspect: dict | None = None) -> int:
    if inspect is None:
        policy = policy_from_flags(list(CORRIDOR_ALLOW), None)
    else:
        path = state_dir / "inspect-policy.yaml"
        path.write_text(INSPECT_POLICY)
        policy = load_policy(path)
    db = state_dir / "events.db"
    session = new_session_id()
    if audit:
        EventWriter(db).close()  # the store exists before the gateway writes its spool
    config = gateway_config(
        session=session, db=db if audit else None, policy=policy, **(inspect or {})
    )
    gateway = GatewayProcess.spawn(config)
    listeners = _listeners()
    ports = {name: s.getsockname()[1] for name, s in listeners.items()}
    gateway.hand_over(listeners)
    for s in listeners.values():
        s.close()
    gateway.wait_ready()
    print(json.dumps({**ports, "pid": gateway.pid}), flush=True)
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _stop)
        select.select([gateway.pidfd], [], [])  # until told to stop, or the gateway ends
    except _Stop:
        pass
    end = gateway.stop()
    gateway.close()
    if audit:
        from corridor.audit import read_events

        written = len(read_events(db, session=session))
        print(f"events written: {written}; gateway end: {end}", file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--no-audit", action="store_true")
    parser.add_argument("--inspect", type=Path, metavar="CA_OUT")
    parser.add_argument("--upstream-ca", type=Path)
    args = parser.parse_args()
    args.state_dir.mkdir(parents=True, exist_ok=True)
    inspect = None
    if args.inspect is not None:
        try:
            inspect = inspection_options(args.state_dir, args.inspect, args.upstream_ca)
        except NoInspection as e:
            print(json.dumps({"error": str(e)}), flush=True)
            return NO_INSPECTION
    return serve(args.state_dir, audit=not args.no_audit, inspect=inspect)


if __name__ == "__main__":
    sys.exit(main())
