"""Rendered backup listings (and single backups) kept in memory, served without FastAPI, the database or a thread
hop.

Control panels poll ``GET /virtual_machines/:id/backups(.json)`` and a pending ``GET /backups/:id(.json)`` far more
often than backups change. Going through
FastAPI, a pooled connection, authentication and rendering costs ~4 ms of CPU per request (bench/api_bench.py);
answering from memory costs tens of microseconds. A hand-written ASGI layer, because the point is to skip the
framework: no caching library can know when a listing stops being true.

An entry is the exact response (status 200, headers, body) to one caller's request, keyed by a keyed BLAKE2b of
the Authorization header, path, format and query string (no plain credentials are kept). It is served only while
all of these hold, otherwise the request goes through the application as usual and refills the entry:

- the change clock (db/changes.py: the change feed, SQLite ``data_version`` or PostgreSQL NOTIFY triggers on the
  tables a listing reads, plus this process's own commits, counted right after any session here commits a write,
  so a client reading its own write never gets the old list) reads as it did when the entry was filled;
- the entry is younger than ``ttl`` (at most the password cache's lifetime: a cached listing must not outlive the
  credential check it stands for);
- neither the caller's account nor their address is being throttled for failed logins (the application then
  decides: 429, or an API key).

Changing a password, suspending or deleting a user, moving a VM to another owner or deleting a backup are writes
to watched tables, so they end every entry at once. Memory is bounded by ``max_bytes`` (least recently used go
first); a listing larger than an eighth of that is never kept.

The slow answers under load were the refills, not the hits (bench/fleet_bench.py, BENCHMARKS.md "Fleet polling"):
when a hot entry reached its lifetime, every connection asking for it missed at once and queued behind the few
handler threads (~5 ms of CPU each, holding the GIL against the event loop), so p99 jumped from ~3 to ~250 ms.
So an entry is refreshed *before* it expires: the first hit after a random point in the second half of its
lifetime goes through the application (and refills it) while the others are still answered from the still-valid
entry; the random point spreads the refills of entries filled together, and at most ``MAX_REFRESHING`` refreshes
run at a time (the others wait for a later hit), so a wave of them, such as every entry filled after a change or
a restart coming due together, holds at most that many handler threads against the event loop. And when an entry
is missing, only one request per key fills it: the others wait for that one and are answered from what it filled
(same credentials, same path, same change-clock reading, so the same answer), or go through the application if it
could not fill.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vmbackup.db.changes import ChangeClock
from vmbackup.services.auth import LoginThrottle

# The listing routes of api/routes/backups.py and its GET /backups/:id (after OnAppMiddleware removed the suffix and
# extra slashes); a VM by its number or its identifier (api/deps.py VmId): two keys for one listing, both ended by
# the same change clock. A backup's answer reads the backups row and the caller (users): both watched tables.
_LISTING = re.compile(
    r"/(?:virtual_machines/(?:\d+|[a-z0-9]{14})(?:/backups(?:/images|/files)?|/disks/\d+/backups)"
    r"|settings/disks/\d+/backups|users/\d+/backups|backups/\d+)"
)
# An entry is refreshed by the first hit after a random point in this last fraction of its lifetime.
REFRESH_AHEAD = (0.5, 0.9)
MAX_REFRESHING = 1


@dataclass(slots=True)
class _Entry:
    version: tuple[int, int]
    expires: float
    refresh_at: float  # from then on, one hit goes through the application to refill it (others still hit)
    user_id: int
    start: Message
    body: Message
    size: int


class ListingCache:
    def __init__(self, clock: ChangeClock, throttle: LoginThrottle, *, ttl: float, max_bytes: int) -> None:
        self.clock = clock
        self._throttle = throttle
        self._ttl = ttl
        self._max_bytes = max_bytes
        self._max_entry = max_bytes // 8
        self._secret = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._bytes = 0
        self._refreshing = 0
        self.hits = 0

    def version(self) -> tuple[int, int] | None:
        return self.clock.version()

    def key(self, scope: Scope) -> bytes | None:
        auth = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if not auth:
            return None  # the application answers 401; nothing to cache
        h = hashlib.blake2b(auth, key=self._secret, digest_size=16)
        h.update(b"\0" + scope["path"].encode() + b"\0" + scope["state"]["fmt"].encode() + b"\0")
        h.update(scope["query_string"])
        return h.digest()

    def lookup(self, key: bytes, version: tuple[int, int], scope: Scope) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = time.monotonic()
        if entry.version != version or entry.expires <= now:
            self._drop(key)
            return None
        client = scope.get("client")
        if self._throttle.retry_after(f"user:{entry.user_id}", f"ip:{client[0] if client else ''}"):
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def claim_refresh(self, entry: _Entry) -> bool:
        """Whether the request that just hit ``entry`` should refill it ahead of its expiry (then call
        ``refreshed`` when done); until it has, the others are still answered from the entry."""
        if entry.refresh_at > time.monotonic() or self._refreshing >= MAX_REFRESHING:
            return False
        entry.refresh_at = entry.expires
        self._refreshing += 1
        return True

    def refreshed(self) -> None:
        self._refreshing -= 1

    def fill(self, key: bytes, version: tuple[int, int], user_id: int, start: Message, body: bytes) -> None:
        if len(body) > self._max_entry or self.version() != version:
            return  # too big, or something committed while it was being read: it may already be out of date
        self._drop(key)
        size = len(body) + 256
        headers = list(start.get("headers", []))
        now = time.monotonic()
        self._entries[key] = _Entry(
            version,
            now + self._ttl,
            now + self._ttl * random.uniform(*REFRESH_AHEAD),
            user_id,
            {"type": "http.response.start", "status": 200, "headers": headers},
            {"type": "http.response.body", "body": body, "more_body": False},
            size,
        )
        self._bytes += size
        while self._bytes > self._max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: bytes) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.size

    def __len__(self) -> int:
        return len(self._entries)


class ListingCacheMiddleware:
    """Sits inside OnAppMiddleware (which resolved the path and format) and in front of everything else."""

    def __init__(self, app: ASGIApp, cache: ListingCache) -> None:
        self.app = app
        self.cache = cache
        self._filling: dict[bytes, asyncio.Event] = {}  # keys being filled by a request in flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or not _LISTING.fullmatch(scope["path"]):
            await self.app(scope, receive, send)
            return
        cache = self.cache
        version = cache.version()
        key = cache.key(scope) if version is not None else None
        if key is None or version is None:
            await self.app(scope, receive, send)
            return
        entry = cache.lookup(key, version, scope)
        if entry is None and (filling := self._filling.get(key)) is not None:
            await filling.wait()  # another request is filling this very entry: its answer is this one's
            entry = cache.lookup(key, version, scope)
        if entry is not None:
            if cache.claim_refresh(entry):
                try:
                    await self._fill(scope, receive, send, key, version)
                finally:
                    cache.refreshed()
                return
            await send(entry.start)
            await send(entry.body)
            return
        await self._fill(scope, receive, send, key, version)

    async def _fill(self, scope: Scope, receive: Receive, send: Send, key: bytes, version: tuple[int, int]) -> None:
        start: Message | None = None
        parts: list[bytes] = []
        complete = False

        async def capture(message: Message) -> None:
            nonlocal start, complete
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))
                complete = not message.get("more_body", False)
            await send(message)

        filling = self._filling.get(key)
        if filling is None:
            filling = self._filling[key] = asyncio.Event()
        else:
            filling = None  # a refresh-ahead while another fill runs, or a waiter that found nothing: no second owner
        try:
            await self.app(scope, receive, capture)
            user_id: Any = scope["state"].get("user_id")
            if start is not None and start["status"] == 200 and complete and isinstance(user_id, int):
                self.cache.fill(key, version, user_id, start, b"".join(parts))
        finally:
            if filling is not None:
                del self._filling[key]
                filling.set()
