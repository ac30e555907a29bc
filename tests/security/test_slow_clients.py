"""Slow and idle clients cannot lock others out of a real `vmbackup serve` (api/serving.py).

The audit opened ~1,000 connections that sent half a request line and stopped: nothing ever closed them, the
process ran out of file descriptors, and every client was refused. Here the server runs with a low open-file limit
and 1 s timeouts, and more half-open connections than it may hold.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.acceptance.serve_process import Served, serving
from tests.conftest import ADMIN

TIMEOUT = 1.0
FAST = {
    "VMBACKUP_HEADER_TIMEOUT_SECONDS": str(TIMEOUT),
    "VMBACKUP_BODY_TIMEOUT_SECONDS": str(TIMEOUT),
    "VMBACKUP_KEEP_ALIVE_SECONDS": "1",
    "VMBACKUP_MAX_CONNECTIONS": "100",
}
AUTH = base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode())


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    # 256 descriptors: without timeouts and a cap, the 320 connections below exhaust them.
    with serving(tmp_path, FAST, open_files=256) as s:
        yield s


_opened: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def _connect(served: Served, first: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=5)
    _opened.append(sock)
    if first:
        sock.sendall(first)
    return sock


def _whole_response(sock: socket.socket) -> bytes:
    """One whole response (headers and Content-Length bytes of body): a single recv may return only the headers,
    and the body read later would look like data on a connection that should be idle."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        0,
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _closed_by_server(sock: socket.socket) -> bool:
    """True when the server has closed the connection (possibly after a 408), without waiting for it."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
            if not data.startswith(b"HTTP/1.1 408") and b"408" not in data:
                return False
    except BlockingIOError:
        return False
    except OSError:
        return True


def _trickle(socks: list[socket.socket], stop: threading.Event) -> None:
    """One byte every 0.2 s on each socket, a body or header that never ends (slowloris)."""
    while not stop.wait(0.2):
        for sock in socks:
            with contextlib.suppress(OSError):  # closed by the server: what the test waits for
                sock.send(b"x")


def test_half_open_and_trickling_connections_neither_lock_out_nor_outlive_the_timeouts(served: Served) -> None:
    body_request = (
        b"POST /users.json HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + AUTH + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
    )
    trickling_bodies = [_connect(served, body_request) for _ in range(10)]
    trickling_headers = [_connect(served, b"GET /version.json HTTP/1.1\r\nX-Slow: ") for _ in range(10)]
    stop = threading.Event()
    thread = threading.Thread(target=_trickle, args=(trickling_bodies + trickling_headers, stop), daemon=True)
    thread.start()
    try:
        half_open = [_connect(served, b"GET /versi") for _ in range(300)]
        started = time.monotonic()
        with httpx.Client(base_url=served.base, auth=ADMIN, timeout=10) as client:
            r = client.get("/version.json")
        assert r.status_code == 200, r.text
        assert time.monotonic() - started < 3, "a normal client waited behind idle connections"

        time.sleep(TIMEOUT + 1.5)  # every timeout has passed, with the sweep's slack
        idle = [s for s in half_open if not _closed_by_server(s)]
        assert idle == [], f"{len(idle)} half-open connections still open after the header timeout"
        slow = [s for s in trickling_headers + trickling_bodies if not _closed_by_server(s)]
        assert slow == [], f"{len(slow)} trickling connections still open after the timeouts"
    finally:
        stop.set()
        thread.join()
    # The service is still whole: a fresh client is served, and nothing crashed on the way.
    with httpx.Client(base_url=served.base, auth=ADMIN, timeout=5) as client:
        assert client.get("/version.json").status_code == 200
    assert served.proc.poll() is None
    assert "Traceback" not in served.output(), served.output()


def test_a_partial_request_gets_408_and_an_idle_kept_alive_connection_is_closed(served: Served) -> None:
    partial = _connect(served, b"GET /version.json HTTP/1.1\r\nHost: x\r\n")
    kept = _connect(served, b"GET /version.json HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + AUTH + b"\r\n\r\n")
    assert _whole_response(kept).startswith(b"HTTP/1.1 200")
    partial.settimeout(TIMEOUT + 2)
    assert partial.recv(65536).startswith(b"HTTP/1.1 408")
    kept.settimeout(3)
    assert kept.recv(65536) == b"", "an idle kept-alive connection is closed after VMBACKUP_KEEP_ALIVE_SECONDS"


def test_at_the_cap_with_every_connection_busy_a_new_one_gets_503(tmp_path: Path) -> None:
    extra = FAST | {"VMBACKUP_MAX_CONNECTIONS": "2", "VMBACKUP_BODY_TIMEOUT_SECONDS": "30"}
    with serving(tmp_path, extra) as served:
        head = (
            b"POST /users.json HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + AUTH + b"\r\nContent-Length: 10\r\n\r\n"
        )
        busy = [_connect(served, head) for _ in range(2)]  # headers sent, bodies pending: busy, not evictable
        time.sleep(0.3)
        refused = _connect(served, b"")
        refused.settimeout(5)
        answer = refused.recv(65536)
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b"Too many open connections" in answer
        for sock in busy:  # before the server stops: it would wait for their requests
            sock.close()
