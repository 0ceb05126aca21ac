"""The world process: every server of the simulated internet, in one asyncio loop.

Run inside the world namespace as root:
    python -m tests.lab.world --config FILE      (from the repository root)
    python tests/lab/world.py --config FILE
It installs the catch-all nft rules, binds every service of the config (any address: the
world routes all of them to itself), prints `ready` on stdout, and serves until SIGTERM.
A unix socket (`control_socket` in the config) answers `sync`: the world replies once
everything that reached it before has been logged, which makes "nothing arrived" a fact.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script path: make `tests.lab` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.lab.config import (
    GIT_SITE,
    GIT_TOKEN,
    HTTPS_SITES,
    PACKAGE_SITES,
    READY_LINE,
    SYNC_COMMAND,
    SYNC_REPLY,
    WS_SITE,
    Service,
    WorldConfig,
)
from tests.lab.records import CATCHALL_LOG, DNS_LOG, HTTP_LOG, JsonlWriter
from tests.lab.world_catchall import CatchAll, nft_ruleset
from tests.lab.world_dns import UdpDns, tcp_dns_handler
from tests.lab.world_git import GitHost, make_repository
from tests.lab.world_http import HttpServer, tls_context
from tests.lab.world_pkg import site_for, site_responder
from tests.lab.world_ws import WsServer

# A packet sent just before `sync` may still sit in a softirq backlog or a ready list of
# the event loop; this pause lets it reach its handler before the reply goes out.
SYNC_SETTLE = 0.02
ECHO_READ = 64 * 1024
# Linux option letting a socket bind an address no interface holds: the world serves
# on addresses that exist only through its `local` routes.
IP_FREEBIND = 15
IPV6_FREEBIND = 78


def bind_service_socket(service: Service) -> socket.socket:
    """A socket bound to the service's address and port, ready for asyncio."""
    family = socket.AF_INET6 if ":" in service.addr else socket.AF_INET
    kind = socket.SOCK_STREAM if service.proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
    else:
        sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
    sock.bind((service.addr, service.port))
    if kind == socket.SOCK_STREAM:
        sock.listen(128)
    sock.setblocking(False)
    return sock


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """TCP echo: send back whatever arrives until the client closes."""
    try:
        while data := await reader.read(ECHO_READ):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def load_nft(rules: str) -> None:
    nft = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")
    if nft is None:
        raise SystemExit("world: nft not found (install nftables)")
    done = subprocess.run([nft, "-f", "-"], input=rules, text=True, capture_output=True)
    if done.returncode != 0:
        raise SystemExit(f"world: nft refused the catch-all rules: {done.stderr.strip()}")


async def serve(config: WorldConfig) -> None:
    """Start every server of the config, announce readiness, serve until SIGTERM/SIGINT."""
    log_dir = Path(config.log_dir)
    dns_log = JsonlWriter(log_dir / DNS_LOG)
    http_log = JsonlWriter(log_dir / HTTP_LOG)
    catchall = CatchAll(JsonlWriter(log_dir / CATCHALL_LOG), config.catchall_port)
    services = config.services()
    load_nft(nft_ruleset(services, config.catchall_port))

    loop = asyncio.get_running_loop()
    tls = tls_context(config.cert_pem, config.key_pem)
    handlers = {
        "dns": tcp_dns_handler(config.hosts, dns_log),
        "http": HttpServer(http_log, "http").handle,
        "https": HttpServer(http_log, "https").handle,
        "echo": echo,
    }
    for site in PACKAGE_SITES:
        handlers[site] = HttpServer(http_log, "https", site_responder(site_for(site))).handle
    if any(host.site == GIT_SITE for host in config.hosts.values()):
        # The repositories live in the lab directory, next to the logs, and go with it.
        repos = Path(config.log_dir).parent / "git"
        make_repository(repos)
        git_host = GitHost(repos, GIT_TOKEN)
        handlers[GIT_SITE] = HttpServer(http_log, "https", git_host.respond).handle
    handlers[WS_SITE] = WsServer(http_log).handle
    servers = await catchall.start()
    for service in services:
        sock = bind_service_socket(service)
        if service.proto == "udp":
            await loop.create_datagram_endpoint(lambda: UdpDns(config.hosts, dns_log), sock=sock)
            continue
        ssl_ctx = tls if service.kind in ("https", *HTTPS_SITES) else None
        servers.append(await asyncio.start_server(handlers[service.kind], sock=sock, ssl=ssl_ctx))

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await reader.readline()) == SYNC_COMMAND:
            await asyncio.sleep(SYNC_SETTLE)
            await catchall.settle()
            writer.write(SYNC_REPLY)
            await writer.drain()
        writer.close()

    servers.append(await asyncio.start_unix_server(control, path=config.control_socket))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(READY_LINE, flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The lab world: DNS, web, echo, catch-all.")
    parser.add_argument("--config", required=True, type=Path, help="world config (JSON)")
    args = parser.parse_args(argv)
    asyncio.run(serve(WorldConfig.from_json(args.config.read_text())))


if __name__ == "__main__":
    main()
