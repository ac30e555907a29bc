"""Auto-backup switches (per VM: incremental; per disk: normal) and the presets applied on first enable."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from vmbackup.api import presenters
from vmbackup.api.deps import Ctx, Id, VmId
from vmbackup.api.routes._crud import add_crud_routes, each
from vmbackup.api.schemas import PresetCreate, PresetUpdate
from vmbackup.db.models import AutobackupPreset
from vmbackup.services import schedules

router = APIRouter(tags=["auto-backups"])


def _switch(ctx: Ctx, target_type: str, target_id: int, enabled: bool) -> Response:
    # Any body is ignored (the PHP wrapper sends none, or a stale one). The answer lists the target's schedules.
    items = schedules.set_autobackups(ctx.db, ctx.user, target_type, target_id, enabled)
    return ctx.many("schedule", map(presenters.schedule, items))


@router.post("/virtual_machines/{vm_id}/autobackup_enable")
def enable_vm(vm_id: VmId, ctx: Ctx) -> Response:
    return _switch(ctx, "VirtualMachine", vm_id, True)


@router.post("/virtual_machines/{vm_id}/autobackup_disable")
def disable_vm(vm_id: VmId, ctx: Ctx) -> Response:
    return _switch(ctx, "VirtualMachine", vm_id, False)


@router.post("/settings/disks/{disk_id}/autobackup_enable")
def enable_disk(disk_id: Id, ctx: Ctx) -> Response:
    return _switch(ctx, "Disk", disk_id, True)


@router.post("/settings/disks/{disk_id}/autobackup_disable")
def disable_disk(disk_id: Id, ctx: Ctx) -> Response:
    return _switch(ctx, "Disk", disk_id, False)


presets = APIRouter(prefix="/settings/autobackup_presets", tags=["auto-backups"])
add_crud_routes(presets, "autobackup_template", AutobackupPreset, each(presenters.preset), PresetCreate, PresetUpdate)
router.include_router(presets)
