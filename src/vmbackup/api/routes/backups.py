from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from starlette.responses import Response

from vmbackup.api import formats, presenters
from vmbackup.api.body import body, openapi_body
from vmbackup.api.deps import Ctx
from vmbackup.api.schemas import BackupNote
from vmbackup.db.models import Backup
from vmbackup.services import backups

router = APIRouter(tags=["backups"])
ROOT = "backup"


def _list(ctx: Ctx, items: list[Backup]) -> Response:
    return ctx.many(ROOT, map(presenters.backup, items))


@router.get("/virtual_machines/{vm_id}/backups")
def list_vm_backups(vm_id: int, ctx: Ctx) -> Response:
    return _list(ctx, backups.list_for_vm(ctx.db, ctx.user, vm_id))


@router.get("/virtual_machines/{vm_id}/backups/images")
def list_vm_images(vm_id: int, ctx: Ctx) -> Response:
    return _list(ctx, backups.list_for_vm(ctx.db, ctx.user, vm_id, "images"))


@router.get("/virtual_machines/{vm_id}/backups/files")
def list_vm_files(vm_id: int, ctx: Ctx) -> Response:
    return _list(ctx, backups.list_for_vm(ctx.db, ctx.user, vm_id, "files"))


@router.get("/settings/disks/{disk_id}/backups")
def list_disk_backups(disk_id: int, ctx: Ctx) -> Response:
    return _list(ctx, backups.list_for_disk(ctx.db, ctx.user, disk_id))


@router.get("/virtual_machines/{vm_id}/disks/{disk_id}/backups")
def list_vm_disk_backups(vm_id: int, disk_id: int, ctx: Ctx) -> Response:
    return _list(ctx, backups.list_for_disk(ctx.db, ctx.user, disk_id, vm_id=vm_id))


@router.get("/users/{user_id}/backups")
def list_user_backups(user_id: int, ctx: Ctx) -> Response:
    return _list(ctx, backups.list_for_user(ctx.db, ctx.user, user_id))


@router.get("/backups/{backup_id}")
def get_backup(backup_id: int, ctx: Ctx) -> Response:
    return ctx.one(ROOT, presenters.backup(backups.get_backup(ctx.db, ctx.user, backup_id)))


@router.put("/backups/{backup_id}", status_code=204, openapi_extra=openapi_body(ROOT, BackupNote))
def edit_note(backup_id: int, ctx: Ctx, data: Annotated[BackupNote, body(ROOT, BackupNote)]) -> Response:
    backups.edit(ctx.db, ctx.user, backup_id, data.model_dump(exclude_unset=True))
    return formats.no_content()


@router.put(
    "/virtual_machines/{vm_id}/backups/{backup_id}", status_code=204, openapi_extra=openapi_body(ROOT, BackupNote)
)
def edit_vm_backup_note(
    vm_id: int, backup_id: int, ctx: Ctx, data: Annotated[BackupNote, body(ROOT, BackupNote)]
) -> Response:
    backups.edit(ctx.db, ctx.user, backup_id, data.model_dump(exclude_unset=True), vm_id=vm_id)
    return formats.no_content()
