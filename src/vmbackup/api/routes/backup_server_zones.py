"""Backup server zones (OnApp root ``backup_server_group``), and attaching backup servers to them."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from vmbackup.api import presenters
from vmbackup.api.deps import AdminCtx, Ctx, Id
from vmbackup.api.routes._crud import add_crud_routes, each
from vmbackup.api.routes.backup_servers import presenter
from vmbackup.api.schemas import ZoneCreate, ZoneUpdate
from vmbackup.db.models import BackupServerZone
from vmbackup.services import catalog

router = APIRouter(prefix="/settings/backup_server_zones", tags=["backup server zones"])
add_crud_routes(
    router, "backup_server_group", BackupServerZone, each(presenters.backup_server_zone), ZoneCreate, ZoneUpdate
)


@router.get("/{zone_id}/backup_servers")
def list_zone_servers(zone_id: Id, ctx: Ctx) -> Response:
    return ctx.many("backup_server", map(presenter(ctx), catalog.zone_servers(ctx.db, ctx.user, zone_id)))


@router.post("/{zone_id}/backup_servers/{server_id}/attach")
def attach(zone_id: Id, server_id: Id, ctx: AdminCtx) -> Response:
    server = catalog.attach(ctx.db, ctx.user, zone_id, server_id, True)
    return ctx.one("backup_server", presenter(ctx)(server))


@router.post("/{zone_id}/backup_servers/{server_id}/detach")
def detach(zone_id: Id, server_id: Id, ctx: AdminCtx) -> Response:
    server = catalog.attach(ctx.db, ctx.user, zone_id, server_id, False)
    return ctx.one("backup_server", presenter(ctx)(server))
