"""Backup servers (OnApp root ``backup_server``) and the search of the backups on one."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from vmbackup.api import formats, presenters
from vmbackup.api.body import body, openapi_body
from vmbackup.api.deps import AdminCtx, Context, Ctx, Id
from vmbackup.api.schemas import BackupServerCreate, BackupServerUpdate
from vmbackup.db.models import BackupServer
from vmbackup.services import backups, catalog, placement

router = APIRouter(prefix="/settings/backup_servers", tags=["backup servers"])

# Not the shared CRUD routes: a backup server shows its workers' cpu_idle, which its row does not hold.


def present(ctx: Context, servers: Iterable[BackupServer]) -> Iterator[dict[str, Any]]:
    idle = placement.cpu_idle(ctx.db)
    return (presenters.backup_server(s, idle.of(s.id)) for s in servers)


@router.get("", name="list_backup_servers")
def list_servers(ctx: Ctx) -> Response:
    return ctx.many("backup_server", present(ctx, catalog.list_all(ctx.db, ctx.user, BackupServer)))


@router.post(
    "", status_code=201, name="create_backup_server", openapi_extra=openapi_body("backup_server", BackupServerCreate)
)
def create_server(
    ctx: AdminCtx, data: Annotated[BackupServerCreate, body("backup_server", BackupServerCreate)]
) -> Response:
    server = catalog.create(ctx.db, ctx.user, BackupServer, data.model_dump())
    return ctx.one("backup_server", next(present(ctx, [server])), 201)


@router.get("/{id}", name="get_backup_server")
def get_server(id: Id, ctx: Ctx) -> Response:
    return ctx.one("backup_server", next(present(ctx, [catalog.get(ctx.db, ctx.user, BackupServer, id)])))


@router.put(
    "/{id}",
    status_code=204,
    name="update_backup_server",
    openapi_extra=openapi_body("backup_server", BackupServerUpdate),
)
def update_server(
    id: Id, ctx: AdminCtx, data: Annotated[BackupServerUpdate, body("backup_server", BackupServerUpdate)]
) -> Response:
    catalog.update(ctx.db, ctx.user, BackupServer, id, data.model_dump(exclude_unset=True))
    return formats.no_content()


@router.delete("/{id}", status_code=204, name="delete_backup_server")
def delete_server(id: Id, ctx: Ctx) -> Response:
    catalog.delete(ctx.db, ctx.user, BackupServer, id)
    return formats.no_content()


@router.get("/{server_id}/backups_search")
def backups_search(server_id: Id, request: Request, ctx: AdminCtx) -> Response:
    """Rails-style nested query: ``size[from]``, ``size[to]`` (kB), ``period[startdate]``, ``period[enddate]``."""
    params = request.query_params
    found = backups.search(
        ctx.db,
        ctx.user,
        server_id,
        size_from=params.get("size[from]"),
        size_to=params.get("size[to]"),
        start=params.get("period[startdate]"),
        end=params.get("period[enddate]"),
    )
    return ctx.many("backup", map(presenters.backup, found))
