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
