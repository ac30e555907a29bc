"""Backup servers (OnApp root ``backup_server``) and the search of the backups on one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from vmbackup.api import presenters
from vmbackup.api.deps import AdminCtx, Context, Id
from vmbackup.api.routes._crud import add_crud_routes
from vmbackup.api.schemas import BackupServerCreate, BackupServerUpdate
from vmbackup.db.models import BackupServer
from vmbackup.services import backups, placement

router = APIRouter(prefix="/settings/backup_servers", tags=["backup servers"])


def presenter(ctx: Context) -> Callable[[BackupServer], dict[str, Any]]:
    """A backup server shows its live workers' cpu_idle, which its row does not hold: read once per request."""
    idle = placement.cpu_idle(ctx.db)
    return lambda s: presenters.backup_server(s, idle.of(s.id))


add_crud_routes(router, "backup_server", BackupServer, presenter, BackupServerCreate, BackupServerUpdate)


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
