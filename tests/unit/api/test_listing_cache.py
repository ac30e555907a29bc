"""ListingCache bookkeeping without a server: memory bound, lifetime, versions."""

from __future__ import annotations

from vmbackup.api.listing_cache import ListingCache
from vmbackup.db.changes import ChangeClock
from vmbackup.services.auth import LoginThrottle


class Feed:
    def __init__(self) -> None:
        self.n: int | None = 1

    def version(self) -> int | None:
        return self.n

    def start(self) -> None: ...

    def stop(self) -> None: ...


START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
SCOPE = {"client": ("10.0.0.1", 1)}


def _cache(feed: Feed, **kw: float) -> ListingCache:
    clock = ChangeClock(feed)  # type: ignore[arg-type]
    return ListingCache(clock, LoginThrottle(), **{"ttl": 60.0, "max_bytes": 64 * 1024, **kw})  # type: ignore[arg-type]


def test_memory_is_bounded_least_recently_used_first_and_big_bodies_are_not_kept():
    feed = Feed()
    cache = _cache(feed)
    v = cache.version()
    assert v is not None
    for i in range(100):
        cache.fill(bytes([i]), v, 7, START, b"x" * 2000)
        cache.lookup(bytes([0]), v, SCOPE)  # keep the first one in use
    assert len(cache) < 100
    assert cache._bytes <= 64 * 1024
    assert cache.lookup(bytes([0]), v, SCOPE) is not None
    assert cache.lookup(bytes([1]), v, SCOPE) is None
    cache.fill(b"big", v, 7, START, b"x" * (64 * 1024 // 8 + 1))
    assert cache.lookup(b"big", v, SCOPE) is None


def test_an_entry_ends_with_a_change_a_local_commit_or_its_lifetime():
    feed = Feed()
    cache = _cache(feed)
    v = cache.version()
    cache.fill(b"k", v, 7, START, b"[]")
    assert cache.lookup(b"k", v, SCOPE) is not None
    feed.n = 2
    assert cache.lookup(b"k", cache.version(), SCOPE) is None
    v = cache.version()
    cache.fill(b"k", v, 7, START, b"[]")
    cache.clock.bump()
    assert cache.lookup(b"k", cache.version(), SCOPE) is None
    feed.n = None
    assert cache.version() is None
    expired = _cache(Feed(), ttl=0.0)
    v = expired.version()
    expired.fill(b"k", v, 7, START, b"[]")
    assert expired.lookup(b"k", v, SCOPE) is None


def test_a_fill_read_before_a_commit_is_not_kept():
    cache = _cache(Feed())
    v = cache.version()
    cache.clock.bump()  # committed while the listing was being read
    cache.fill(b"k", v, 7, START, b"[]")
    assert len(cache) == 0


def test_an_entry_is_refreshed_by_one_request_before_it_expires(monkeypatch):
    """Near the end of its lifetime one hit refills it (one refresh at a time); the others are still answered."""
    import vmbackup.api.listing_cache as lc

    cache = _cache(Feed(), ttl=60.0)
    v = cache.version()
    cache.fill(b"k", v, 7, START, b"[]")
    cache.fill(b"j", v, 7, START, b"[]")
    entry, other = cache.lookup(b"k", v, SCOPE), cache.lookup(b"j", v, SCOPE)
    assert entry is not None and other is not None
    assert not cache.claim_refresh(entry)
    now = lc.time.monotonic()
    monkeypatch.setattr(lc.time, "monotonic", lambda: now + 60 * 0.96)
    assert cache.claim_refresh(entry)  # this request refills it
    assert not cache.claim_refresh(entry)  # the others are still answered from memory
    assert not cache.claim_refresh(other)  # one refresh at a time
    cache.refreshed()
    assert cache.claim_refresh(other)
    monkeypatch.setattr(lc.time, "monotonic", lambda: now + 61)
    assert cache.lookup(b"k", v, SCOPE) is None  # and it never outlives its lifetime


def test_a_missing_entry_is_filled_by_one_request_the_others_wait_for_it():
    import asyncio

    from vmbackup.api.listing_cache import ListingCacheMiddleware

    cache = _cache(Feed())
    calls = 0

    async def app(scope, receive, send):
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        scope["state"]["user_id"] = 7
        await send(START)
        await send({"type": "http.response.body", "body": b"[1]", "more_body": False})

    mw = ListingCacheMiddleware(app, cache)

    async def request() -> list[dict]:
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/backups/1",
            "query_string": b"",
            "headers": [(b"authorization", b"Basic eDp5")],
            "state": {"fmt": "json"},
            "client": ("10.0.0.1", 1),
        }
        await mw(scope, None, send)
        return sent

    async def main():
        return await asyncio.gather(*(request() for _ in range(10)))

    answers = asyncio.run(main())
    assert calls == 1
    assert all(a[1]["body"] == b"[1]" for a in answers)
