"""Credentials: argon2id password hashes, hashed API keys, and a cache so a request does not pay argon2 each time.

Why the cache is safe: its key is an HMAC (under a per-process random secret) of the exact login and secret sent,
and its value records which stored credential verified it (a fingerprint of the user's password hash and API-key
hash). A hit is honoured only while the user's current row still has that fingerprint, so changing the password,
regenerating the API key or deleting the user invalidates every cached entry at once; entries also expire after
``ttl`` seconds. Where the caller has a change clock (db/changes.py: it moves with every commit to the users table,
from any process), an entry also keeps a copy of the verified row and the clock's reading; under the same reading
no row can have changed, so ``recall`` hands back the copy without reading the row at all. Plain secrets are never
kept in memory beyond the request.

Guessing is rate limited by ``LoginThrottle``: failed logins are counted per login and per client address, and past
the limit the caller gets 429 with Retry-After. While throttled only API keys are checked (160 random bits, not
guessable at any rate), so automation keeps working while someone hammers the password of its login.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import inspect
from sqlalchemy.orm import Session, make_transient_to_detached

from vmbackup.db.models import User
from vmbackup.db.queries import users as user_queries
from vmbackup.errors import TooManyAttempts, Unauthorized


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> str:
    return secrets.token_hex(20)


def _fingerprint(user: User) -> str:
    return hashlib.sha256(f"{user.id}:{user.password_hash}:{user.api_key_hash}".encode()).hexdigest()


@dataclass
class _Entry:
    user_id: int
    fingerprint: str
    expires: float
    # The verified user row, and the change clock's reading taken before it was read (db/changes.ChangeClock):
    # while the clock still reads the same, no user row can have changed, so the row need not be read again.
    snapshot: User | None = None
    version: Any = None


def _snapshot(user: User) -> User:
    """A detached copy of ``user``'s columns, to hand to other sessions with ``Session.merge(load=False)``."""
    copy = User(**{attr.key: getattr(user, attr.key) for attr in inspect(User).column_attrs})
    make_transient_to_detached(copy)
    return copy


class Authenticator:
    def __init__(self, *, memory_kib: int, time_cost: int, ttl: float, max_entries: int = 10_000) -> None:
        self._hasher = PasswordHasher(memory_cost=memory_kib, time_cost=time_cost)
        self._ttl = ttl
        self._max = max_entries
        self._key = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def hash_password(self, password: str) -> str:
        return self._hasher.hash(password)

    def _cache_key(self, login: str, secret: str) -> bytes:
        return hmac.new(self._key, f"{login}\0{secret}".encode(), hashlib.sha256).digest()

    def recall(self, login: str, secret: str, version: Any) -> User | None:
        """The user these credentials verified as, if that was under change clock reading ``version`` (so the row
        cannot have changed since) and within the cache's lifetime; else None (read the row and ``check``)."""
        if version is None:
            return None
        key = self._cache_key(login, secret)
        with self._lock:
            entry = self._cache.get(key)
        if entry is None or entry.version != version or entry.expires <= time.monotonic():
            return None
        return entry.snapshot

    def check(self, user: User, login: str, secret: str, version: Any = None) -> bool:
        """True when ``secret`` is the user's password or API key. ``version``: the change clock's reading taken
        before ``user`` was read; with it, a later ``recall`` under the same reading skips reading the row."""
        key = self._cache_key(login, secret)
        now = time.monotonic()
        with self._lock:
            entry = self._cache.get(key)
        fresh = entry is not None and entry.expires > now and entry.user_id == user.id
        if fresh and entry is not None and hmac.compare_digest(entry.fingerprint, _fingerprint(user)):
            if version is not None:  # a new entry, not two assignments: recall must see both or neither
                renewed = _Entry(entry.user_id, entry.fingerprint, entry.expires, _snapshot(user), version)
                with self._lock:
                    self._cache[key] = renewed
            return True
        if not self._verify(user, secret):
            return False
        if self._ttl > 0:
            snapshot = _snapshot(user) if version is not None else None
            with self._lock:
                self._cache[key] = _Entry(user.id, _fingerprint(user), now + self._ttl, snapshot, version)
                self._cache.move_to_end(key)
                while len(self._cache) > self._max:
                    self._cache.popitem(last=False)
        return True

    def is_api_key(self, user: User, secret: str) -> bool:
        """True when ``secret`` is the user's API key (one SHA-256 and a constant-time comparison)."""
        return user.api_key_hash is not None and hmac.compare_digest(user.api_key_hash, hash_api_key(secret))

    def _verify(self, user: User, secret: str) -> bool:
        if self.is_api_key(user, secret):
            return True
        try:
            return self._hasher.verify(user.password_hash, secret)
        except (VerificationError, InvalidHashError):
            return False

    def burn(self) -> None:
        """Spend the time of one password check, so an unknown login answers as slowly as a wrong password."""
        if not hasattr(self, "_dummy"):
            self._dummy = self._hasher.hash(secrets.token_hex(8))
        with contextlib.suppress(VerificationError):
            self._hasher.verify(self._dummy, "x")


class LoginThrottle:
    """Failed logins counted per key (a login, a client address) over a sliding window.

    A key with ``max_failures`` failures inside the last ``window`` seconds is throttled until the oldest of them
    leaves the window. Only failures are recorded, so a client that signs in correctly pays one dictionary look-up
    and is never slowed. Memory is bounded: at most ``max_keys`` keys are tracked, the least recently failed ones
    being forgotten first (an attacker spraying random logins can push out its own entries, not gain guesses: the
    per-address key still counts every one of its failures). ``max_failures`` 0 turns throttling off.
    """

    def __init__(
        self,
        *,
        max_failures: int = 10,
        window: float = 60.0,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_failures
        self._window = window
        self._max_keys = max_keys
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, *keys: str) -> int:
        """0 if none of ``keys`` is throttled, else whole seconds until all of them may try again."""
        if self._max <= 0:
            return 0
        now = self._clock()
        wait = 0.0
        with self._lock:
            for key in keys:
                times = self._failures.get(key)
                if times is None:
                    continue
                self._expire(times, now)
                if len(times) >= self._max:
                    wait = max(wait, times[-self._max] + self._window - now)
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, *keys: str) -> None:
        if self._max <= 0:
            return
        now = self._clock()
        with self._lock:
            for key in keys:
                times = self._failures.setdefault(key, deque(maxlen=self._max))
                self._expire(times, now)
                times.append(now)
                self._failures.move_to_end(key)
            while len(self._failures) > self._max_keys:
                self._failures.popitem(last=False)

    def _expire(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self._window:
            times.popleft()


def sign_in(
    db: Session,
    auth: Authenticator,
    throttle: LoginThrottle,
    clock: Any,
    login: str,
    secret: str,
    client: str,
) -> User:
    """The user ``login`` and ``secret`` (a password or API key) name, from ``client``, or Unauthorized /
    TooManyAttempts. ``clock``: the change clock (db/changes.py), or None.

    Every refusal after the throttle costs one password check, whatever the reason: an unknown login checks a
    dummy hash, and an account that is not active (suspended, locked) has its secret checked like any other before
    it is refused, so neither answers faster than a wrong password for an active account (a timing oracle that
    told which logins exist and which are suspended)."""
    version = clock.version() if clock is not None else None  # read before the row, see ChangeClock
    known = auth.recall(login, secret, version)
    if known is not None and not throttle.retry_after(f"user:{known.id}", f"ip:{client}"):
        if not _active(known):
            throttle.failed(f"user:{known.id}", f"ip:{client}")
            raise Unauthorized()
        # Verified under this same clock reading: no user row has changed since, so no query (merge, no load).
        return db.merge(known, load=False)
    # No stored login or email holds a NUL (logins are [A-Za-z0-9_.@+-], emails validated), and PostgreSQL cannot
    # even compare one: such a name is unknown without asking the database.
    user = user_queries.by_login_or_email(db, login) if "\0" not in login else None
    # Per account (whether named by login or email), else per name tried; and per client address.
    keys = (f"user:{user.id}" if user else f"login:{login.casefold()}", f"ip:{client}")
    wait = throttle.retry_after(*keys)
    if wait:
        # Throttled: no password is checked (not even against the cache), only an API key, which cannot be guessed.
        if user is not None and _active(user) and auth.is_api_key(user, secret):
            return user
        raise TooManyAttempts(wait)
    if user is None:
        auth.burn()
        throttle.failed(*keys)
        raise Unauthorized()
    verified = auth.check(user, login, secret, version)  # also for an inactive account: the same cost
    if not verified or not _active(user):
        throttle.failed(*keys)
        raise Unauthorized()
    return user


def _active(user: User) -> bool:
    return user.status == "active"
