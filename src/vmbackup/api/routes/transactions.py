from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from vmbackup.api import presenters
from vmbackup.api.body import parse
from vmbackup.api.deps import Ctx, Id, VmId
from vmbackup.errors import Invalid
from vmbackup.services import transactions

router = APIRouter(tags=["transactions"])
ROOT = "transaction"


@dataclass
class Paging:
    page: int
    per_page: int
    detailed: bool


async def paging(request: Request) -> Paging:
    """page/per_page from the path, the query string or, as the PHP wrapper sends them, a JSON body on the GET."""
    params: dict[str, object] = {}
    try:
        # The body reader's depth limit matters here too: json.loads of a deeply nested body was a 500.
        sent = parse(await request.body(), "application/json")
    except Invalid:
        sent = None  # a stale or odd body on a GET is ignored, as OnApp clients expect
    if isinstance(sent, dict):
        params.update(sent)
    params.update(request.query_params)
    params.update(request.path_params)

    def number(name: str, default: int) -> int:
        value = str(params.get(name, ""))
        # isascii: str.isdigit() also accepts digits int() refuses, such as "³" (found by the fuzz test)
        return int(value) if value.isascii() and value.isdigit() and 0 < int(value) < 2**31 else default

    return Paging(number("page", 1), number("per_page", transactions.DEFAULT_PER_PAGE), "detailed" in params)


PagingDep = Annotated[Paging, Depends(paging)]


def _list(ctx: Ctx, p: Paging, vm_id: int | None = None) -> Response:
    items = transactions.list_page(ctx.db, ctx.user, page=p.page, per_page=p.per_page, vm_id=vm_id)
    return ctx.many(ROOT, (presenters.transaction(t, log=p.detailed, admin=ctx.user.is_admin) for t in items))


@router.get("/transactions")
def list_transactions(ctx: Ctx, p: PagingDep) -> Response:
    return _list(ctx, p)


@router.get("/transactions/page/{page}")
def list_transactions_page(page: int, ctx: Ctx, p: PagingDep) -> Response:
    return _list(ctx, p)


@router.get("/transactions/per_page/{per_page}")
def list_transactions_per_page(per_page: int, ctx: Ctx, p: PagingDep) -> Response:
    return _list(ctx, p)


@router.get("/virtual_machines/{vm_id}/transactions")
def list_vm_transactions(vm_id: VmId, ctx: Ctx, p: PagingDep) -> Response:
    return _list(ctx, p, vm_id)


@router.get("/transactions/{tx_id}")
def get_transaction(tx_id: Id, ctx: Ctx) -> Response:
    tx = transactions.get(ctx.db, ctx.user, tx_id)
    return ctx.one(ROOT, presenters.transaction(tx, log=True, admin=ctx.user.is_admin))
