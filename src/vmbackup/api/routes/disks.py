from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from starlette.responses import Response

from vmbackup.api import formats, presenters
from vmbackup.api.body import body, openapi_body
from vmbackup.api.deps import AdminCtx, Ctx, Id, VmId
from vmbackup.api.schemas import DiskCreate, DiskUpdate
from vmbackup.db.models import Disk
from vmbackup.services import machines

router = APIRouter(tags=["disks"])
ROOT = "disk"


def _present(ctx: Ctx, disks: list[Disk]) -> Response:
    return ctx.many(ROOT, (presenters.disk(d, admin=ctx.admin) for d in disks))


@router.get("/virtual_machines/{vm_id}/disks")
def list_vm_disks(vm_id: VmId, ctx: Ctx) -> Response:
    return _present(ctx, machines.list_disks(ctx.db, ctx.user, vm_id))


@router.post("/virtual_machines/{vm_id}/disks", status_code=201, openapi_extra=openapi_body(ROOT, DiskCreate))
def create_disk(ctx: AdminCtx, vm_id: VmId, data: Annotated[DiskCreate, body(ROOT, DiskCreate)]) -> Response:
    disk = machines.create_disk(ctx.db, ctx.user, vm_id, data.model_dump())
    return ctx.one(ROOT, presenters.disk(disk, admin=ctx.admin), 201)


@router.get("/settings/disks")
def list_disks(ctx: Ctx) -> Response:
    return _present(ctx, machines.list_disks(ctx.db, ctx.user))


@router.get("/settings/disks/{disk_id}")
def get_disk(disk_id: Id, ctx: Ctx) -> Response:
    return ctx.one(ROOT, presenters.disk(machines.get_disk(ctx.db, ctx.user, disk_id), admin=ctx.admin))


@router.put("/settings/disks/{disk_id}", status_code=204, openapi_extra=openapi_body(ROOT, DiskUpdate))
def update_disk(disk_id: Id, ctx: AdminCtx, data: Annotated[DiskUpdate, body(ROOT, DiskUpdate)]) -> Response:
    machines.update_disk(ctx.db, ctx.user, disk_id, data.model_dump(exclude_unset=True))
    return formats.no_content()


@router.delete("/settings/disks/{disk_id}", status_code=204)
def delete_disk(disk_id: Id, ctx: Ctx) -> Response:
    machines.delete_disk(ctx.db, ctx.user, disk_id)
    return formats.no_content()
