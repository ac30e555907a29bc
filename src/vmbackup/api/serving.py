"""How `vmbackup serve` runs uvicorn: the port bound first, read timeouts, a connection cap, trusted proxies.

- **Bind first.** ``listen_socket`` binds and listens before the application is built, so a second ``serve`` on a
  busy port stops there: no migration, no worker, no recovery of transactions that the first one is running.
- **Slow clients.** uvicorn closes idle kept-alive connections (``timeout_keep_alive``) but puts no limit on how long
  a client may take to send a request: a connection that sends half a request line and stops stays open forever,
  and enough of them exhaust the process's file descriptors, locking every client out. ``GuardedProtocol`` (uvicorn's
  httptools protocol plus deadlines) closes a connection whose request line and headers are not complete
  ``header_timeout`` after it opened (after the request's first byte on a kept-alive connection), answering 408 if
  part of a request had arrived, and one whose body is not complete ``body_timeout`` after its headers. The body
  clock does not run against the client while the server itself has stopped reading (the handler has not yet
  asked for more of a large body). Deadlines are plain numbers checked by one timer per server every fraction
  of a timeout, so a request pays no timer of its own.
- **Connection cap.** With ``max_connections`` open, a new connection closes the oldest connection still waiting
  for its request headers (idle kept-alive or slow: clients retry a closed idle connection, and a slow one is what
  the cap is against); if every open connection is busy with a request, the new one is answered 503 and closed.
  So idle and half-open connections can delay a client by at most one eviction, never lock it out.
- **Forwarded headers** (X-Forwarded-For, -Proto) are believed only from ``trusted_proxies``; uvicorn's default
  believes them from 127.0.0.1, so any local client (or one behind a local proxy) could name its own address and
  dodge the per-address login throttle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
import socket
from collections.abc import Callable
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from vmbackup.config import Settings

log = logging.getLogger("vmbackup.serving")

BACKLOG = 2048  # uvicorn's default
# Descriptors the process needs besides client connections: database files and connections, the listening socket,
# the change feed, the worker's images and storage files.
RESERVED_FILES = 128


def ensure_open_files(max_connections: int) -> None:
    """Raise the soft open-file limit so ``max_connections`` clients fit beside the process's own files; raise
    OSError naming both numbers when the hard limit does not allow it (the cap would otherwise be a lie: past
    the limit accept() fails and clients are refused however the connections are managed)."""
    need = max_connections + RESERVED_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise OSError(
            f"VMBACKUP_MAX_CONNECTIONS={max_connections} needs {need} open files and the limit is {hard}: "
            "lower the setting or raise the limit (ulimit -n, systemd LimitNOFILE)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to and listening on ``host:port``; raises OSError (e.g. the port is in use).

    Listening at once, not only binding: Linux lets two SO_REUSEADDR sockets bind one port while neither listens,
    so a bind alone would not tell a second ``serve`` that the port is taken."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart while old connections are in TIME_WAIT
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class Limits:
    """What every connection of one server shares: the timeouts, the cap, and the timer that enforces them."""

    def __init__(self, *, header_timeout: float, body_timeout: float, max_connections: int) -> None:
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        # How often deadlines are checked: a timeout is enforced at most this much late.
        self.sweep_every = min(1.0, max(0.05, min(header_timeout, body_timeout) / 4))
        self._connections: set[Any] | None = None

    def watch(self, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        """Start the deadline timer on the first connection (the server's set of open connections is uvicorn's)."""
        if self._connections is None:
            self._connections = connections
            loop.call_later(self.sweep_every, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for conn in list(self._connections or ()):
            if isinstance(conn, GuardedProtocol) and conn.deadline is not None and conn.deadline <= now:
                conn.expire(now)
        loop.call_later(self.sweep_every, self._sweep, loop)


def _raw_response(status: bytes, message: str) -> bytes:
    body = json.dumps({"errors": [message]}).encode()
    head = (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json; charset=utf-8\r\nconnection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    return head + body


_TIMEOUT = _raw_response(b"408 Request Timeout", "The request was not received in time.")
_BUSY = _raw_response(b"503 Service Unavailable", "Too many open connections; try again later.")


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with read deadlines and a connection cap (see the module docstring)."""

    limits: ClassVar[Limits]
    deadline: float | None = None  # when the request line and headers, or the body, must be complete
    awaiting: bool = False  # waiting for a request's headers (idle kept-alive or partly received): evictable
    since: float = 0.0  # when it began waiting
    started: bool = False  # some bytes of the awaited request have arrived

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        now = self.loop.time()
        self.awaiting, self.since, self.deadline = True, now, now + self.limits.header_timeout
        self.limits.watch(self.loop, self.connections)
        if len(self.connections) > self.limits.max_connections:
            self._make_room()

    def _make_room(self) -> None:
        waiting = [c for c in self.connections if c is not self and isinstance(c, GuardedProtocol) and c.awaiting]
        if waiting:
            min(waiting, key=lambda c: c.since).close_waiting()
        else:
            log.warning("%d connections open, all busy: refusing a new one", len(self.connections) - 1)
            self.transport.write(_BUSY)
            self.transport.close()

    def close_waiting(self) -> None:
        """Close a connection that is waiting for a request's headers; 408 if part of a request has arrived."""
        if self.started:
            self.transport.write(_TIMEOUT)
        self.transport.close()
        self.deadline, self.awaiting = None, False

    def expire(self, now: float) -> None:
        if self.awaiting:
            self.close_waiting()
        elif self.flow.read_paused:
            # The server stopped reading (the handler has not asked for more of the body yet): not the client's delay.
            self.deadline = now + self.limits.body_timeout
        else:
            # Mid-body: the handler waiting for it sees the disconnect (uvicorn tells it http.disconnect).
            self.transport.close()
            self.deadline = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.deadline, self.awaiting = None, False
        super().connection_lost(exc)

    # Parser callbacks (httptools calls them from data_received)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.started = True
        if self.deadline is None:  # a kept-alive connection: the clock starts with the request's first byte
            self.deadline = self.loop.time() + self.limits.header_timeout

    def on_headers_complete(self) -> None:
        self.awaiting = self.started = False
        self.deadline = self.loop.time() + self.limits.body_timeout
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.deadline = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # Waiting for the next request now (uvicorn's keep-alive timer closes it if none comes), unless a pipelined
        # one is already under way, whose header deadline stands.
        self.awaiting, self.since = True, self.loop.time()
        if not self.started:
            self.deadline = None
        super().on_response_complete()


def protocol_for(settings: Settings) -> type[GuardedProtocol]:
    limits = Limits(
        header_timeout=settings.header_timeout_seconds,
        body_timeout=settings.body_timeout_seconds,
        max_connections=settings.max_connections,
    )

    class Configured(GuardedProtocol):
        pass

    Configured.limits = limits
    return Configured


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol_for(settings),
        timeout_keep_alive=settings.keep_alive_seconds,
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=list(settings.trusted_proxies),
        lifespan="on",
        log_level=settings.log_level,
        access_log=False,
    )


def serve(app: Any, settings: Settings, sock: socket.socket) -> None:
    """Serve ``app`` on the already listening ``sock`` until a signal stops it."""
    uvicorn.Server(uvicorn_config(app, settings)).run(sockets=[sock])


def serve_processes(make_app: Callable[[int], Any], settings: Settings, sock: socket.socket, processes: int) -> int:
    """Serve on ``sock`` from ``processes`` forked processes, process ``i`` running ``make_app(i)``; returns the exit
    status. One process: served here, no fork. The kernel spreads new connections over the processes listening on
    the shared socket. The parent only waits: SIGINT/SIGTERM reach the children as SIGTERM (each stops as
    ``serve`` does), and when one child exits the others are stopped too (a supervisor restarts the service
    whole rather than this process respawning a part of it)."""
    if processes <= 1:
        serve(make_app(0), settings, sock)
        return 0
    children: dict[int, int] = {}
    for i in range(processes):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                serve(make_app(i), settings, sock)
            except BaseException:
                log.exception("API process %d failed", i)
                code = 1
            finally:
                os._exit(code)
        children[pid] = i
    sock.close()

    def stop(_signum: int, _frame: Any) -> None:
        # Always SIGTERM: after a Ctrl-C the children got the terminal's SIGINT already, and a second SIGINT makes
        # uvicorn exit at once instead of finishing its requests.
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        while children:
            try:
                pid, raw = os.wait()
            except ChildProcessError:
                break
            children.pop(pid, None)
            code = os.waitstatus_to_exitcode(raw)
            if code != 0 and status == 0:
                status = 1
                log.error("API process %d exited with %d: stopping the others", pid, code)
            stop(signal.SIGTERM, None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
