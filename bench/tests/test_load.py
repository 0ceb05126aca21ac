"""The load client's pieces that decide what is counted: percentiles, splitting the
concurrency, the requests it writes, and reading responses from a real socket pair."""

from __future__ import annotations

import socket
import threading

import pytest

from bench import load


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 50, None),
        ([1.0], 50, 1.0),
        ([1.0], 99, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
        ([float(i) for i in range(1, 101)], 99, 99.0),
        ([float(i) for i in range(1, 101)], 100, 100.0),
        ([float(i) for i in range(1, 1001)], 50, 500.0),
    ],
    ids=["empty", "one-p50", "one-p99", "four-p50", "hundred-p99", "hundred-max", "thousand-p50"],
)
def test_percentile_is_nearest_rank(values, q, expected):
    assert load.percentile(values, q) == expected


@pytest.mark.parametrize(
    ("conc", "max_procs", "expected"),
    [(1, 4, (1, 1)), (64, 4, (4, 16)), (6, 4, (3, 2)), (7, 4, (1, 7)), (2, 4, (2, 1))],
    ids=["c1", "c64", "c6-uneven", "c7-prime", "c2"],
)
def test_split_concurrency_keeps_the_total(conc, max_procs, expected):
    procs, threads = load.split_concurrency(conc, max_procs)
    assert (procs, threads) == expected
    assert procs * threads == conc


SPEC = {"host": "bench.test", "path": "/small", "scheme": "http", "port": 80}


@pytest.mark.parametrize(
    ("spec", "first_line", "host"),
    [
        ({**SPEC, "mode": "direct"}, b"GET /small HTTP/1.1", b"Host: bench.test"),
        (
            {**SPEC, "mode": "absolute"},
            b"GET http://bench.test/small HTTP/1.1",
            b"Host: bench.test",
        ),
        (
            {**SPEC, "mode": "absolute", "port": 8080},
            b"GET http://bench.test:8080/small HTTP/1.1",
            b"Host: bench.test:8080",
        ),
        (
            {**SPEC, "mode": "direct", "scheme": "https", "port": 443},
            b"GET /small HTTP/1.1",
            b"Host: bench.test",
        ),
    ],
    ids=["origin-form", "absolute-form", "absolute-other-port", "https-default-port"],
)
def test_request_forms(spec, first_line, host):
    lines = load._request(spec).split(b"\r\n")
    assert lines[0] == first_line
    assert host in lines
    assert b"Connection: close" in lines


def _serve(data: bytes) -> socket.socket:
    """A socket pair whose far end sends `data` (in small pieces) and closes."""
    a, b = socket.socketpair()

    def send() -> None:
        for i in range(0, len(data), 7):
            b.sendall(data[i : i + 7])
        b.close()

    threading.Thread(target=send, daemon=True).start()
    return a


def test_read_head_and_body_across_small_reads():
    body = b"x" * 100
    sock = _serve(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nX-A: b\r\n\r\n" + body)
    status, headers, rest = load._read_head(sock)
    assert status == 200
    assert headers[b"content-length"] == b"100"
    assert load._read_body(sock, headers, rest) == 100


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", "body cut at 5 of 100 bytes"),
        (b"HTTP/1.1 200 OK\r\n\r\nbody", "response without Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-", "connection closed before the response head"),
        (b"garbage\r\n\r\n", "bad status line"),
    ],
    ids=["truncated-body", "no-length", "truncated-head", "not-http"],
)
def test_broken_responses_are_errors(data, message):
    sock = _serve(data)
    with pytest.raises(load.ProtocolError, match=message):
        _status, headers, rest = load._read_head(sock)
        load._read_body(sock, headers, rest)
