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
from vmbackup.errors import NotFound, Unauthorized
from vmbackup.jobs.queue import JobQueue
from vmbackup.services import machines
from vmbackup.services.access import require_admin
from vmbackup.services.auth import Authenticator, sign_in


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
    """The caller named by the Basic credentials (services/auth.py `sign_in` decides), or Unauthorized."""
    login, secret = _credentials(request)
    state = request.app.state
    return sign_in(db, state.auth, state.throttle, state.changes, login, secret, _client_address(request))


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


def resolve_vm(vm_id: Annotated[str, Path()], ctx: Ctx) -> int:
    """The ``{vm_id}`` of a ``/virtual_machines/...`` path as a VM id: its number, or its 14-character identifier
    (OnApp clients such as libcloud's driver put that in URLs; one made of digits only is tried as both). Anything
    else names no VM: 404.

    Resolved after authentication (``ctx``), so an anonymous caller cannot learn which identifiers exist; whether
    the caller may see the VM is then decided as for a number, by the service the handler calls."""
    if vm_id.isascii() and vm_id.isdigit() and len(vm_id) <= 10 and 1 <= int(vm_id) <= MAX_ID:
        return int(vm_id)
    found = machines.resolve_vm_id(ctx.db, vm_id)
    if found is None:
        # As for any malformed path id (api/errors.py), unless it could be an identifier: then no such VM.
        raise NotFound("VirtualMachine not found" if machines.is_identifier(vm_id) else "Resource not found")
    ctx.db.commit()  # the connection goes back to the pool before the handler's thread wait, as in get_context
    return found


VmId = Annotated[int, Depends(resolve_vm)]
