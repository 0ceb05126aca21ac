"""A WebSocket through `corridor run`, under TLS inspection, with a real handshake and frames.

The client runs inside the sandbox (Python's standard library only: no WebSocket package is
a dependency, and the Node.js here has no global WebSocket): TLS to wss://ws.test through
the transparent path, trusting the session CA through SSL_CERT_FILE, a real RFC 6455
handshake carrying a brokered bearer token, masked frames out and the world's echo back
(tests/lab/world_ws.py). The gateway decides the handshake like any request (a path rule),
swaps the placeholder in, relays the 101 and then the frames, and records the request.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tests.lab.config import CORRIDOR_LAB_FLAGS, SANDBOX_PYTHON

from corridor.audit.store import read_events

CORRIDOR = [sys.executable, "-m", "corridor"]
REAL = "real-ws-" + "Tq8Vn3Kx7Bd2Hs6Pm1Ry4"  # only corridor's own environment has it
BIG = 200_000  # a binary message larger than one relay chunk, in both directions

POLICY = """\
version: 1
allow:
  - host: ws.test
    paths: [/ws]
credentials:
  - name: WS_TOKEN
    from: env:CORRIDOR_LAB_WS_TOKEN
    hosts: [ws.test]
    inject: bearer
"""

# Inside the sandbox. One line per step: what happened, so the test can compare lines.
CLIENT = r"""
import base64, hashlib, os, socket, ssl, struct, sys

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
BIG = int(sys.argv[1])


def frame(opcode, payload):
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", n)
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", n)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big") if n else b""
    return head + mask + masked


def exact(s, n):
    data = b""
    while len(data) < n:
        more = s.recv(n - len(data))
        if not more:
            raise EOFError("closed after %d of %d bytes" % (len(data), n))
        data += more
    return data


def read_frame(s):
    first, second = exact(s, 2)
    n = second & 0x7F
    if n == 126:
        n = struct.unpack("!H", exact(s, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", exact(s, 8))[0]
    return first & 0x0F, exact(s, n)


def head_of(s):
    data = b""
    while not data.endswith(b"\r\n\r\n"):
        more = s.recv(1)
        if not more:
            raise EOFError("closed during the response head")
        data += more
    return data


ctx = ssl.create_default_context()  # SSL_CERT_FILE: the session's bundle
for path in sys.argv[2:]:
    s = ctx.wrap_socket(socket.create_connection(("ws.test", 443), timeout=30),
                        server_hostname="ws.test")
    key = base64.b64encode(os.urandom(16))
    s.sendall(
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key
        + b"\r\nAuthorization: Bearer " + os.environ["WS_TOKEN"].encode() + b"\r\n\r\n"
    )
    head = head_of(s)
    status = int(head.split()[1])
    if status != 101:
        print(path, status, flush=True)
        s.close()
        continue
    want = base64.b64encode(hashlib.sha1(key + GUID).digest())
    print(path, status, "accept-ok" if want in head else "accept-bad", flush=True)
    for opcode, message in ((1, b"hello corridor"), (2, os.urandom(BIG))):
        s.sendall(frame(opcode, message))
        got_op, got = read_frame(s)
        print("echo", got_op, got == message, flush=True)
    s.sendall(frame(8, struct.pack("!H", 1000)))
    got_op, got = read_frame(s)
    print("close", got_op, struct.unpack("!H", got)[0], flush=True)
    print("end", repr(s.recv(1)), flush=True)  # the server hangs up after the close
    s.close()
"""


@pytest.mark.lab
def test_websocket_under_inspection_end_to_end(lab, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "client.py").write_text(CLIENT)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    state = tmp_path / "state"
    argv = [*CORRIDOR, "run", *CORRIDOR_LAB_FLAGS, "--upstream-ca", str(lab.ca_pem),
            "--state-dir", str(state), "--workspace", str(ws), "--policy", str(policy),
            "--", SANDBOX_PYTHON, "client.py", str(BIG), "/ws", "/elsewhere"]  # fmt: skip
    with lab.capture() as cap:
        r = lab.run(argv, cwd=str(ws), timeout=120, env={"CORRIDOR_LAB_WS_TOKEN": REAL})
        requests = cap.http_requests()
        leaks = cap.catchall()
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "/ws 101 accept-ok",
        "echo 1 True",
        "echo 2 True",
        "close 8 1000",
        "end b''",
        "/elsewhere 403",
    ], r.stdout + r.stderr
    # Upstream got the handshake with its upgrade headers and the real token; the refused
    # path never reached it.
    assert [(q["host"], q["method"], q["path"]) for q in requests] == [("ws.test", "GET", "/ws")]
    sent = requests[0]["headers"]
    assert (sent["upgrade"], sent["connection"]) == ("websocket", "Upgrade")
    assert sent["authorization"] == f"Bearer {REAL}"
    assert leaks == []
    stored = read_events(state / "events.db")
    (http,) = [e for e in stored if e.kind == "http"]
    assert (http.host, http.method, http.path, http.status) == ("ws.test", "GET", "/ws", 101)
    assert dict(http.data or {}) == {"upgrade": "websocket"}
    # Frames (with their headers and masks) both ways, counted after the 101.
    assert http.bytes_up is not None and http.bytes_up > BIG
    assert http.bytes_down is not None and http.bytes_down > BIG
    assert [(e.host, e.data["name"]) for e in stored if e.kind == "credential"] == [  # type: ignore[index]
        ("ws.test", "WS_TOKEN")
    ]
    refused = [e for e in stored if e.kind == "connection" and e.decision == "deny"]
    assert [(e.host, e.reason) for e in refused] == [("ws.test", "no rule allows this path")]
    assert REAL not in r.stdout + r.stderr
