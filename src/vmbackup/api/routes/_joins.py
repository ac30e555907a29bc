"""The backup server joins of a hypervisor or a hypervisor zone (root ``backup_server_join``): where the backups
of the VMs there may go. The same three routes under both, differing only in the kind of target."""

# No `from __future__ import annotations` here: the handlers' annotations name `TargetId`, made per call below,
# and FastAPI could not resolve that name from a string annotation.
from typing import Annotated

from fastapi import APIRouter, Path
from starlette.responses import Response

from vmbackup.api import formats, presenters
from vmbackup.api.body import body, openapi_body
from vmbackup.api.deps import MAX_ID, AdminCtx, Id
from vmbackup.api.schemas import BackupServerJoinCreate
from vmbackup.services import hypervisors

ROOT = "backup_server_join"
Body = Annotated[BackupServerJoinCreate, body(ROOT, BackupServerJoinCreate)]


def add_join_routes(router: APIRouter, target_type: str, param: str) -> None:
    """``GET/POST /{param}/backup_server_joins`` and ``DELETE .../{join_id}`` on ``router``, for ``target_type``
    (services/hypervisors.py HYPERVISOR or ZONE) named by the path parameter ``param``."""
    TargetId = Annotated[int, Path(alias=param, ge=1, le=MAX_ID)]  # noqa: N806 (a type)
    path = f"/{{{param}}}/backup_server_joins"
    kind = target_type.lower()

    def list_joins(ctx: AdminCtx, target_id: TargetId) -> Response:
        joins = hypervisors.list_joins(ctx.db, ctx.user, target_type, target_id)
        return ctx.many(ROOT, map(presenters.backup_server_join, joins))

    def create_join(ctx: AdminCtx, target_id: TargetId, data: Body) -> Response:
        join = hypervisors.create_join(ctx.db, ctx.user, target_type, target_id, data.backup_server_id)
        return ctx.one(ROOT, presenters.backup_server_join(join), 201)

    def delete_join(ctx: AdminCtx, target_id: TargetId, join_id: Id) -> Response:
        hypervisors.delete_join(ctx.db, ctx.user, target_type, target_id, join_id)
        return formats.no_content()

    router.add_api_route(path, list_joins, methods=["GET"], name=f"list_{kind}_backup_server_joins")
    router.add_api_route(
        path,
        create_join,
        methods=["POST"],
        status_code=201,
        name=f"create_{kind}_backup_server_join",
        openapi_extra=openapi_body(ROOT, BackupServerJoinCreate),
    )
    router.add_api_route(
        path + "/{join_id}", delete_join, methods=["DELETE"], status_code=204, name=f"delete_{kind}_backup_server_join"
    )
