"""The lab tests itself: real clients in the lab namespace against the world.

If these pass, a test that says "the world saw nothing" means it: the catch-all is shown
here to record TCP, UDP and ICMP sent anywhere, and `sync` to wait for them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import pytest
from tests.lab import netns
from tests.lab.config import (
    DNS_V4,
    DNS_V6,
    LAB_V4,
    LAB_V6,
    WORLD_V4,
    WORLD_V6,
    HostEntry,
    WorldConfig,
)
from tests.lab.harness import REPO_ROOT, Lab, lab_session, remove_stale_dirs
from tests.lab.world_catchall import nft_ruleset
from tests.lab.world_dns import answer
from tests.lab.world_http import MAX_BYTES, payload, payload_chunks, payload_sha256, served_host

PY = sys.executable  # the venv's python: dnspython is importable in the lab too


def py(lab: Lab, script: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a Python script in the lab namespace; it must succeed."""
    r = lab.run([PY, "-c", textwrap.dedent(script)], **kw)
    assert r.returncode == 0, r.stderr
    return r


# --- the table, DNS answers, rules and payload, without namespaces --------------------------


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        pytest.param({"a": ("198.18.0.1",)}, "198.18.0.1 is in 198.18.0.0/15", id="synthetic-v4"),
        pytest.param(
            {"aaaa": ("fd63:6f72:7269:646f::5",)},
            "fd63:6f72:7269:646f::5 is in fd63:6f72:7269:646f::/64",
            id="synthetic-v6",
        ),
        pytest.param({"a": ("192.0.2.77",)}, "192.0.2.77 is in 192.0.2.0/24", id="on-the-link"),
        pytest.param({"a": ("127.0.0.1",)}, "127.0.0.1 is in 127.0.0.0/8", id="loopback"),
        pytest.param({"a": ("2001:db8::1",)}, "2001:db8::1 is not an IPv4 address", id="v6-as-a"),
        pytest.param({"echo_ports": (1,)}, "echo port 1 is not usable", id="catchall-port"),
    ],
)
def test_host_entry_refuses(entry: dict, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        HostEntry(**entry)


def test_host_entry_takes_link_local_metadata_address() -> None:
    # Tests will add metadata.test -> 169.254.169.254: the table must accept it.
    assert HostEntry(a=("169.254.169.254",)).addresses == ("169.254.169.254",)


def test_world_config_round_trips_through_json() -> None:
    config = WorldConfig(
        log_dir="/l",
        control_socket="/c",
        cert_pem="/p",
        key_pem="/k",
        hosts={"x.test": HostEntry(a=("203.0.113.5",), echo_ports=(7,))},
    )
    assert WorldConfig.from_json(config.to_json()) == config
    assert [(s.proto, s.addr, s.port, s.kind) for s in config.services()] == [
        ("udp", DNS_V4, 53, "dns"),
        ("tcp", DNS_V4, 53, "dns"),
        ("udp", DNS_V6, 53, "dns"),
        ("tcp", DNS_V6, 53, "dns"),
        ("tcp", "203.0.113.5", 80, "http"),
        ("tcp", "203.0.113.5", 443, "https"),
        ("tcp", "203.0.113.5", 7, "echo"),
    ]


HOSTS = {
    "allowed.test": HostEntry(a=("203.0.113.10",)),
    "v6only.test": HostEntry(aaaa=("2001:db8:10::6",)),
}


@pytest.mark.parametrize(
    ("qname", "qtype", "rcode", "addresses"),
    [
        pytest.param("allowed.test", "A", "NOERROR", ["203.0.113.10"], id="a"),
        pytest.param("ALLOWED.test.", "A", "NOERROR", ["203.0.113.10"], id="case-and-dot"),
        pytest.param("allowed.test", "AAAA", "NOERROR", [], id="nodata-aaaa"),
        pytest.param("allowed.test", "MX", "NOERROR", [], id="nodata-mx"),
        pytest.param("v6only.test", "AAAA", "NOERROR", ["2001:db8:10::6"], id="aaaa"),
        pytest.param("unknown.test", "A", "NXDOMAIN", [], id="unknown"),
        pytest.param("allowed.test.example", "A", "NXDOMAIN", [], id="suffix-is-not-the-name"),
    ],
)
def test_dns_answer(qname: str, qtype: str, rcode: str, addresses: list[str]) -> None:
    result = answer(dns.message.make_query(qname, qtype).to_wire(), HOSTS)
    assert result.rcode == rcode
    assert result.questions == ((qname.rstrip(".").lower(), qtype),)
    assert result.reply is not None
    reply = dns.message.from_wire(result.reply)
    assert dns.rcode.to_text(reply.rcode()) == rcode
    assert sorted(r.to_text() for rrset in reply.answer for r in rrset) == addresses


def test_dns_answer_to_garbage_is_logged_not_answered() -> None:
    result = answer(b"\x00\x01garbage", HOSTS)
    assert (result.reply, result.questions, result.rcode) == (None, (), "MALFORMED")


def test_nft_ruleset_lets_services_through_and_diverts_the_rest() -> None:
    config = WorldConfig(
        log_dir="/l", control_socket="/c", cert_pem="/p", key_pem="/k", hosts=HOSTS
    )
    rules = nft_ruleset(config.services(), 1)
    assert "203.0.113.10 . tcp . 443" in rules and "2001:db8:10::6 . tcp . 80" in rules
    assert f"{DNS_V4} . udp . 53" in rules and f"{DNS_V6} . tcp . 53" in rules
    assert "tproxy ip to :1 accept" in rules and "tproxy ip6 to :1 accept" in rules


def test_nft_ruleset_without_v6_services_has_an_empty_set() -> None:
    rules = nft_ruleset([], 1)
    assert "set svc6 { type ipv6_addr . inet_proto . inet_service;\n  }" in rules


def test_payload_is_periodic_and_chunking_does_not_change_it() -> None:
    data = payload(70_000)
    assert len(data) == 70_000
    assert data[:3] == b"\x00\x01\x02" and data[250:253] == b"\xfa\x00\x01"
    assert data == bytes(i % 251 for i in range(70_000))
    assert [len(c) for c in payload_chunks(131_023)] == [65_511, 65_511, 1]
    assert payload_sha256(0) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize(
    ("host", "sni", "expected"),
    [
        pytest.param("allowed.test", None, "allowed.test", id="host"),
        pytest.param("allowed.test:8080", None, "allowed.test", id="host-with-port"),
        pytest.param("[2001:db8::1]:80", None, "2001:db8::1", id="v6-literal"),
        pytest.param(None, "sni.test", "sni.test", id="sni-when-no-host"),
        pytest.param(None, None, "203.0.113.1", id="address-last"),
    ],
)
def test_served_host(host: str | None, sni: str | None, expected: str) -> None:
    assert served_host(host, sni, "203.0.113.1") == expected


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        pytest.param(["cor-lab-999999999-0"], ["cor-lab-999999999-0"], id="dead"),
        pytest.param(["cor-world-1-3"], [], id="alive"),
        pytest.param(["cor-probe-999999999-0"], ["cor-probe-999999999-0"], id="probe"),
        pytest.param(["cor-other-999999999-0", "mine", "cor-lab-x-0"], [], id="not-ours"),
    ],
)
def test_stale_names(names: list[str], expected: list[str]) -> None:
    assert netns.stale_names(names, alive={1}) == expected


# --- the namespaces ----------------------------------------------------------------------


def test_lab_and_world_have_only_lo_and_their_veth(lab: Lab) -> None:
    def links(ns: str) -> set[str]:
        out = netns.ip("-n", ns, "-o", "link", "show")
        return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}

    assert links(lab.ns) == {"lo", netns.LAB_IF}
    assert links(lab.world_ns) == {"lo", netns.WORLD_IF}
    assert f"default via {WORLD_V4} dev {netns.LAB_IF}" in netns.ip("-n", lab.ns, "route")
    assert f"default via {WORLD_V6} dev {netns.LAB_IF}" in netns.ip("-n", lab.ns, "-6", "route")


def test_lab_resolver_files(lab: Lab) -> None:
    r = lab.run(["cat", "/etc/resolv.conf", "/etc/hosts"])
    assert r.stdout == f"nameserver {DNS_V4}\n" + netns.LAB_HOSTS


# --- DNS ---------------------------------------------------------------------------------


def test_getent_resolves_through_world_dns(lab: Lab) -> None:
    with lab.capture() as cap:
        r = lab.run(["getent", "hosts", "allowed.test"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["203.0.113.10", "allowed.test"]
    asked = {(q["name"], q["type"], q["src"], q["dst"]) for q in cap.dns_queries()}
    assert ("allowed.test", "A", LAB_V4, DNS_V4) in asked


def test_getent_v6only_and_dual(lab: Lab) -> None:
    assert lab.run(["getent", "hosts", "v6only.test"]).stdout.split() == [
        "2001:db8:10::6",
        "v6only.test",
    ]
    dual = lab.run(["getent", "ahosts", "dual.test"]).stdout
    assert "203.0.113.20" in dual and "2001:db8:10::20" in dual


def test_unknown_name_is_nxdomain_and_logged(lab: Lab) -> None:
    with lab.capture() as cap:
        r = lab.run(["getent", "hosts", "unknown.test"])
    assert r.returncode == 2  # getent: key not found
    rcodes = {(q["name"], q["rcode"]) for q in cap.dns_queries()}
    assert rcodes == {("unknown.test", "NXDOMAIN")}


def test_dns_over_tcp_and_on_the_ipv6_server(lab: Lab) -> None:
    with lab.capture() as cap:
        r = py(
            lab,
            f"""
            import dns.message, dns.query
            q = dns.message.make_query("dual.test", "AAAA")
            print(dns.query.tcp(q, "{DNS_V4}", timeout=5).answer[0][0])
            print(dns.query.udp(q, "{DNS_V6}", timeout=5).answer[0][0])
        """,
        )
    assert r.stdout.split() == ["2001:db8:10::20", "2001:db8:10::20"]
    seen = [(q["proto"], q["src"], q["dst"]) for q in cap.dns_queries()]
    assert seen == [("tcp", LAB_V4, DNS_V4), ("udp", LAB_V6, DNS_V6)]


# --- HTTP and HTTPS ----------------------------------------------------------------------


def test_https_body_names_the_host_and_is_logged(lab: Lab) -> None:
    with lab.capture() as cap:
        r = lab.run(["curl", "-sS", "--cacert", str(lab.ca_pem), "https://allowed.test/"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello from allowed.test\n"
    [req] = cap.http_requests()
    assert {
        k: req[k] for k in ("scheme", "host", "sni", "method", "path", "src", "dst", "dport")
    } == {
        "scheme": "https",
        "host": "allowed.test",
        "sni": "allowed.test",
        "method": "GET",
        "path": "/",
        "src": LAB_V4,
        "dst": "203.0.113.10",
        "dport": 443,
    }
    assert req["headers"]["user-agent"].startswith("curl/")


def test_https_is_refused_without_the_lab_ca(lab: Lab) -> None:
    r = lab.run(["curl", "-sS", "https://allowed.test/"])
    assert r.returncode == 60, r.stderr  # curl: peer certificate cannot be authenticated


def test_certificate_covers_every_name(lab: Lab) -> None:
    for name in ("denied.test", "other.test", "dual.test"):
        r = lab.run(["curl", "-sS", "--cacert", str(lab.ca_pem), f"https://{name}/"])
        assert r.stdout == f"hello from {name}\n", r.stderr


@pytest.mark.parametrize("family", ["-4", "-6"])
def test_ipv6_and_ipv4_https(lab: Lab, family: str) -> None:
    r = lab.run(
        [
            "curl",
            "-sS",
            family,
            "--cacert",
            str(lab.ca_pem),
            "-w",
            " %{remote_ip}",
            "https://dual.test/",
        ]
    )
    expected_ip = "203.0.113.20" if family == "-4" else "2001:db8:10::20"
    assert r.stdout == f"hello from dual.test\n {expected_ip}", r.stderr
    v6 = lab.run(["curl", "-sS", "-6", "--cacert", str(lab.ca_pem), "https://v6only.test/"])
    assert v6.stdout == "hello from v6only.test\n", v6.stderr


@pytest.mark.parametrize("size", [0, 1, 251, 65_511, 65_512, 1_000_000, MAX_BYTES])
def test_bytes_arrive_intact(lab: Lab, size: int) -> None:
    r = lab.run(["sh", "-c", f"curl -sSf http://allowed.test/bytes/{size} | sha256sum"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == payload_sha256(size)


def test_bytes_over_https(lab: Lab) -> None:
    r = lab.run(
        [
            "sh",
            "-c",
            f"curl -sSf --cacert {lab.ca_pem} https://allowed.test/bytes/3000000 | sha256sum",
        ]
    )
    assert r.stdout.split()[0] == payload_sha256(3_000_000), r.stderr


def test_bytes_above_the_limit_is_a_400(lab: Lab) -> None:
    r = lab.run(["curl", "-sS", "-w", "%{http_code}", f"http://allowed.test/bytes/{MAX_BYTES + 1}"])
    assert r.stdout == f"/bytes/N takes a count from 0 to {MAX_BYTES}\n400"


def test_headers_are_echoed_as_json(lab: Lab) -> None:
    r = lab.run(
        [
            "curl",
            "-sS",
            "-H",
            "X-Lab-Probe: yes",
            "-H",
            "Authorization: Bearer t0k",
            "http://other.test/headers",
        ]
    )
    headers = json.loads(r.stdout)
    assert headers["x-lab-probe"] == "yes" and headers["authorization"] == "Bearer t0k"
    assert headers["host"] == "other.test"


def test_post_echo_returns_the_body(lab: Lab) -> None:
    body = "line one\nline two \u00e9\n"
    r = lab.run(
        [
            "curl",
            "-sS",
            "--data-binary",
            "@-",
            "-H",
            "Content-Type: text/x-lab",
            "-w",
            "\n%{content_type}",
            "http://allowed.test/echo",
        ],
        input=body,
    )
    assert r.stdout == body + "\ntext/x-lab"


def test_unknown_path_and_wrong_method(lab: Lab) -> None:
    r = lab.run(["curl", "-sS", "-w", "%{http_code}", "http://allowed.test/nope"])
    assert r.stdout == "nothing at /nope\n404"
    r = lab.run(["curl", "-sS", "-X", "DELETE", "-w", "%{http_code}", "http://allowed.test/"])
    assert r.stdout == "DELETE is not served on /\n405"


def test_keep_alive_serves_several_requests_on_one_connection(lab: Lab) -> None:
    with lab.capture() as cap:
        r = py(
            lab,
            """
            import http.client
            c = http.client.HTTPConnection("allowed.test", 80, timeout=5)
            for path in ("/", "/bytes/10", "/headers"):
                c.request("GET", path)
                resp = c.getresponse()
                print(resp.status, len(resp.read()))
        """,
        )
    assert [line.split()[0] for line in r.stdout.splitlines()] == ["200", "200", "200"]
    ports = {req["sport"] for req in cap.http_requests()}
    assert len(cap.http_requests()) == 3 and len(ports) == 1


# --- TCP echo ------------------------------------------------------------------------------


@pytest.mark.parametrize("port", [7, 5432])
def test_tcp_echo(lab: Lab, port: int) -> None:
    r = py(
        lab,
        f"""
        import socket
        s = socket.create_connection(("echo.test", {port}), timeout=5)
        s.sendall(b"ping-{port}")
        print(s.recv(100).decode())
    """,
    )
    assert r.stdout.strip() == f"ping-{port}"


# --- the catch-all ---------------------------------------------------------------------------


def _icmp_script(v4: str, v6: str) -> str:
    # No `ping` binary is needed: raw ICMP sockets, as root in the lab.
    return f"""
        import socket, struct
        def checksum(b):
            b += b"\\0" * (len(b) % 2)
            s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
            s = (s >> 16) + (s & 0xFFFF); s += s >> 16
            return ~s & 0xFFFF
        body = struct.pack("!HH", 0x1AB, 1) + b"lab-ping"
        p4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        p4.settimeout(5)
        msg = struct.pack("!BBH", 8, 0, 0) + body
        p4.sendto(struct.pack("!BBH", 8, 0, checksum(msg)) + body, ("{v4}", 0))
        reply = p4.recv(200)
        print("v4 reply type", reply[(reply[0] & 15) * 4])
        p6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        p6.sendto(struct.pack("!BBH", 128, 0, 0) + body, ("{v6}", 0))  # kernel sums v6
    """


def test_catchall_records_tcp_udp_and_icmp_to_any_address(lab: Lab) -> None:
    with lab.capture() as cap:
        py(
            lab,
            """
            import socket
            t = socket.create_connection(("203.0.113.77", 9999), timeout=5)
            t.sendall(b"tcp-leak")
            t6 = socket.create_connection(("2001:db8:77::1", 8080), timeout=5)
            t6.sendall(b"tcp6-leak")
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.sendto(b"udp-leak", ("198.51.100.9", 5353))
            u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            u6.sendto(b"udp6-leak", ("2001:db8:77::2", 123))
        """,
        )
        r = py(lab, _icmp_script("203.0.113.99", "2001:db8:77::99"))
    assert "v4 reply type 0" in r.stdout  # the world answers pings, like the internet
    got = {(c["proto"], c["src"], c["dst"], c["dport"], c["data"]) for c in cap.catchall()}
    assert got == {
        ("tcp", LAB_V4, "203.0.113.77", 9999, "tcp-leak"),
        ("tcp", LAB_V6, "2001:db8:77::1", 8080, "tcp6-leak"),
        ("udp", LAB_V4, "198.51.100.9", 5353, "udp-leak"),
        ("udp", LAB_V6, "2001:db8:77::2", 123, "udp6-leak"),
        ("icmp", LAB_V4, "203.0.113.99", None, "lab-ping"),
        ("icmpv6", LAB_V6, "2001:db8:77::99", None, "lab-ping"),
    }
    types = {c["proto"]: c.get("icmp_type") for c in cap.catchall()}
    assert types["icmp"] == 8 and types["icmpv6"] == 128


def test_catchall_records_wrong_ports_and_dns_to_other_servers(lab: Lab) -> None:
    with lab.capture() as cap:
        py(
            lab,
            f"""
            import socket
            for addr, port in (("{lab.addr("allowed.test")}", 22), ("{lab.addr("echo.test")}", 80),
                               ("{DNS_V4}", 80)):
                socket.create_connection((addr, port), timeout=5).sendall(b"x")
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.sendto(b"dns?", ("198.51.100.53", 53))  # a resolver that is not the world's
            u.sendto(b"udp-to-web", ("{lab.addr("allowed.test")}", 443))  # QUIC-like
        """,
        )
    got = {(c["proto"], c["dst"], c["dport"]) for c in cap.catchall()}
    assert got == {
        ("tcp", "203.0.113.10", 22),
        ("tcp", "203.0.113.7", 80),
        ("tcp", DNS_V4, 80),
        ("udp", "198.51.100.53", 53),
        ("udp", "203.0.113.10", 443),
    }
    assert cap.dns_queries() == [] and cap.http_requests() == []


def test_catchall_records_a_connection_that_sends_nothing(lab: Lab) -> None:
    with lab.capture() as cap:
        py(
            lab,
            """
            import socket, time
            s = socket.create_connection(("10.1.2.3", 5432), timeout=5)
            time.sleep(0.5)
        """,
        )
    assert [(c["proto"], c["dst"], c["dport"], c["data"]) for c in cap.catchall()] == [
        ("tcp", "10.1.2.3", 5432, "")
    ]


def test_services_leave_the_catchall_empty(lab: Lab) -> None:
    with lab.capture() as cap:
        lab.run(
            [
                "curl",
                "-sS",
                "--cacert",
                str(lab.ca_pem),
                "https://allowed.test/",
                "http://dual.test/",
            ]
        )
        py(
            lab,
            """
            import socket
            socket.create_connection(("echo.test", 7), timeout=5).close()
        """,
        )
    assert cap.catchall() == []
    assert len(cap.http_requests()) == 2


def test_capture_only_sees_what_came_after_it(lab: Lab) -> None:
    lab.run(["getent", "hosts", "other.test"])
    with lab.capture() as cap:
        lab.run(["getent", "hosts", "denied.test"])
    names = {q["name"] for q in cap.dns_queries()}
    assert names == {"denied.test"}
    assert {q["name"] for q in lab.dns_queries()} >= {"other.test", "denied.test"}


# --- the fixture API -----------------------------------------------------------------------


def test_addr(lab: Lab) -> None:
    assert lab.addr("allowed.test") == "203.0.113.10"
    assert lab.addr("dual.test", 6) == "2001:db8:10::20"
    assert ipaddress.ip_address(lab.addr("v6only.test", family=6)).version == 6
    with pytest.raises(LookupError, match=r"v6only\.test has no IPv4 address"):
        lab.addr("v6only.test")
    with pytest.raises(KeyError):
        lab.addr("unknown.test")


def test_run_as_another_user_with_no_groups(lab: Lab) -> None:
    r = lab.run(["sh", "-c", "id -u; id -g; id -G"], user=65534)
    assert r.stdout.split() == ["65534", "65534", "65534"]


def test_run_environment_adds_and_removes(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_SELFTEST_DROP", "1")
    r = lab.run(
        ["sh", "-c", 'echo "${LAB_X-unset} ${LAB_SELFTEST_DROP-unset}"'],
        env={"LAB_X": "set", "LAB_SELFTEST_DROP": None},
    )
    assert r.stdout == "set unset\n"


def test_run_timeout_kills_the_whole_process_group(lab: Lab) -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        lab.run(["sh", "-c", "sleep 31 & sleep 32"], timeout=0.5)
    pids = netns.ip("netns", "pids", lab.ns).split()
    cmdlines = [open(f"/proc/{p}/cmdline", "rb").read() for p in pids]  # noqa: SIM115
    assert not any(b"sleep\x0031" in c or b"sleep\x0032" in c for c in cmdlines)


def test_popen_delivers_signals(lab: Lab) -> None:
    p = lab.popen(
        ["sh", "-c", "trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.05; done"]
    )
    assert p.stdout is not None and p.stdout.readline() == "ready\n"
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=10)
    assert (out, p.returncode) == ("got-term\n", 42)


# --- building and removing -------------------------------------------------------------------


def _traces(names: list[str]) -> dict[str, bool]:
    listed = netns.list_namespaces()
    return {n: n in listed or (netns.ETC_NETNS / n).exists() for n in names}


def test_teardown_leaves_nothing_behind() -> None:
    with lab_session() as second:
        names = [second.ns, second.world_ns]
        world, directory = second.world, second.dir
        assert second.run(["getent", "hosts", "allowed.test"]).returncode == 0
        assert _traces(names) == dict.fromkeys(names, True)
        assert world is not None and world.poll() is None
    assert _traces(names) == dict.fromkeys(names, False)
    assert world.poll() is not None and not directory.exists()


def test_teardown_runs_when_the_body_fails() -> None:
    with pytest.raises(RuntimeError, match="boom"), lab_session() as third:
        names = [third.ns, third.world_ns]
        raise RuntimeError("boom")
    assert _traces(names) == dict.fromkeys(names, False)


def test_stale_namespaces_of_dead_runs_are_removed() -> None:
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    assert not netns.pid_alive(dead_pid)
    stale = netns.namespace_name("lab", dead_pid, 0)
    live = netns.namespace_name("world", 1, os.getpid())  # pid 1 lives: not to be removed
    for name in (stale, live):
        netns.create_namespace(name)
    netns.write_resolver(stale)
    try:
        removed = netns.remove_stale()
        assert stale in removed and live not in removed
        assert _traces([stale, live]) == {stale: False, live: True}
    finally:
        netns.delete_namespace(stale)
        netns.delete_namespace(live)


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([PY, str(REPO_ROOT / "tests" / "lab" / "world.py"), "--help"], id="script"),
        pytest.param([PY, "-m", "tests.lab.world", "--help"], id="module"),
    ],
)
def test_world_runs_as_script_and_as_module(argv: list[str], tmp_path: Path) -> None:
    cwd = REPO_ROOT if "-m" in argv else tmp_path  # a script path works from anywhere
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "--config" in r.stdout


def test_stale_lab_directories_of_dead_runs_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / "cor-lab-999999999-0-abc123"
    live = tmp_path / f"cor-lab-{os.getpid()}-0-def456"
    other = tmp_path / "cor-lab-notes"
    for d in (dead, live, other):
        d.mkdir()
    assert remove_stale_dirs(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])


def test_world_reported_no_errors(lab: Lab) -> None:
    # Last in this file: every exchange above ran through the world; a handler that raised
    # would have left a traceback here even if its test passed.
    lab.sync()
    assert (lab.dir / "world.stderr").read_text() == ""


@pytest.mark.parametrize(
    ("require", "expected"),
    [
        pytest.param("0", "SKIPPED [1] tests/lab/test_lab_selftest.py", id="skipped"),
        pytest.param("1", "ERROR tests/lab/test_lab_selftest.py::test_addr", id="required"),
    ],
)
def test_missing_tool_skips_with_its_reason_or_fails_when_required(
    require: str, expected: str
) -> None:
    # A PATH without /usr/bin hides bwrap (ip and nft are still found in sbin).
    env = {**os.environ, "PATH": "/usr/sbin", "CORRIDOR_REQUIRE_LAB": require}
    r = subprocess.run(
        [
            PY,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-ra",
            "-k",
            "test_addr",
            str(Path(__file__)),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    reason = "lab tests need `bwrap` to run corridor's sandbox (apt-get install bubblewrap)"
    assert expected in r.stdout and reason in r.stdout, r.stdout
    assert r.returncode == (0 if require == "0" else 1), r.stdout
