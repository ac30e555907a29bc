"""Per-request dependencies: the database session, the authenticated caller, and the response helpers."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import tzinfo
from functools import lru_cache
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session
from starlette.responses import Response

from vmbackup.api import formats
from vmbackup.db.models import Transaction, User
from vmbackup.db.queries import users as user_queries
from vmbackup.errors import TooManyAttempts, Unauthorized
from vmbackup.jobs.queue import JobQueue
from vmbackup.services.access import require_admin
from vmbackup.services.auth import Authenticator, LoginThrottle


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


DbDep = Annotated[Session, Depends(get_db)]

# Ids are 32-bit integer columns (PostgreSQL ``integer``): a path id outside 1..2**31-1 names no object, so it is a
# 404 (see api/errors.py) before it reaches a query, where SQLite or PostgreSQL would overflow with a 500.
MAX_ID = 2**31 - 1
Id = Annotated[int, Path(ge=1, le=MAX_ID)]


@lru_cache(maxsize=512)
def _zone(name: str) -> tzinfo:
    return ZoneInfo(name)


def _credentials(request: Request) -> tuple[str, str]:
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise Unauthorized()
    try:
        login, sep, secret = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized() from None
    if not sep or not login or not secret:
        raise Unauthorized()
    return login, secret


def _client_address(request: Request) -> str:
    # The peer address; from a VMBACKUP_TRUSTED_PROXIES peer, the client its X-Forwarded-For names (api/serving.py).
    return request.client.host if request.client else ""


def authenticate(request: Request, db: Session) -> User:
    """The caller named by the Basic credentials, or Unauthorized / TooManyAttempts.

    Every refusal after the throttle costs one password check, whatever the reason: an unknown login checks a
    dummy hash, and an account that is not active (suspended, locked) has its secret checked like any other before
    it is refused, so neither answers faster than a wrong password for an active account (a timing oracle that
    told which logins exist and which are suspended)."""
    login, secret = _credentials(request)
    auth: Authenticator = request.app.state.auth
    throttle: LoginThrottle = request.app.state.throttle
    clock = request.app.state.changes
    version = clock.version() if clock is not None else None  # read before the row, see ChangeClock
    known = auth.recall(login, secret, version)
    if known is not None and not throttle.retry_after(f"user:{known.id}", f"ip:{_client_address(request)}"):
        if not _active(known):
            throttle.failed(f"user:{known.id}", f"ip:{_client_address(request)}")
            raise Unauthorized()
        # Verified under this same clock reading: no user row has changed since, so no query (merge, no load).
        return db.merge(known, load=False)
    # No stored login or email holds a NUL (logins are [A-Za-z0-9_.@+-], emails validated), and PostgreSQL cannot
    # even compare one: such a name is unknown without asking the database.
    user = user_queries.by_login_or_email(db, login) if "\0" not in login else None
    # Per account (whether named by login or email), else per name tried; and per client address.
    keys = (f"user:{user.id}" if user else f"login:{login.casefold()}", f"ip:{_client_address(request)}")
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


@dataclass
class Context:
    """What a handler needs: session, caller, and how to answer in the caller's format and time zone."""

    db: Session
    user: User
    fmt: str
    tz: tzinfo
    queue: JobQueue | None = None

    def one(self, root: str, record: dict[str, Any], status: int = 200) -> Response:
        return formats.render_one(self.fmt, root, record, self.tz, status)

    def many(self, root: str, records: Iterable[dict[str, Any]]) -> Response:
        return formats.render_list(self.fmt, root, records, self.tz)

    def hash(self, data: dict[str, Any]) -> Response:
        return formats.render_hash(self.fmt, data, self.tz)

    @property
    def admin(self) -> bool:
        return self.user.is_admin

    def queued(self, tx: Transaction) -> None:
        """Hand committed transaction ``tx`` to the job delivery (none: external workers poll the table)."""
        if self.queue is not None:
            self.queue.submit(tx)


def get_context(request: Request, db: DbDep) -> Context:
    user = authenticate(request, db)
    # Hand the connection back before the handler waits for its own thread: holding it across that wait let
    # requests pile up on pool connections while the threads that could use them waited too (a stall under
    # ~50 concurrent requests on SQLite, found by bench/api_bench.py). The user stays loaded (no expiry on commit).
    db.commit()
    request.state.user_id = user.id  # for api/listing_cache.py: whose answer this is
    return Context(db=db, user=user, fmt=request.state.fmt, tz=_zone(user.time_zone), queue=request.app.state.queue)


Ctx = Annotated[Context, Depends(get_context)]


def auth_of(request: Request) -> Authenticator:
    return request.app.state.auth


AuthDep = Annotated[Authenticator, Depends(auth_of)]


def get_admin_context(ctx: Ctx) -> Context:
    # Checked before the body is read, so a user learns "forbidden", not what the body should have held.
    require_admin(ctx.user)
    return ctx


AdminCtx = Annotated[Context, Depends(get_admin_context)]
