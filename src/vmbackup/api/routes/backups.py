from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from vmbackup.api import formats, presenters
from vmbackup.api.body import body, openapi_body, read_lenient
from vmbackup.api.deps import Ctx, Id, VmId
from vmbackup.api.schemas import BackupConvert, BackupNote
from vmbackup.db.models import Backup
from vmbackup.services import actions, backups

router = APIRouter(tags=["backups"])
ROOT = "backup"


def _list(ctx: Ctx, items: Iterable[Backup | Mapping[str, Any]]) -> Response:
    return ctx.many(ROOT, map(presenters.backup, items))


@router.get("/virtual_machines/{vm_id}/backups")
def list_vm_backups(vm_id: VmId, ctx: Ctx) -> Response:
    return _list(ctx, backups.list_for_vm(ctx.db, ctx.user, vm_id))


@router.get("/virtual_machines/{vm_id}/backups/images")
def list_vm_images(vm_id: VmId, ctx: Ctx) -> Response:
    return _list(ctx, backups.list_for_vm(ctx.db, ctx.user, vm_id, "images"))


@router.get("/virtual_machines/{vm_id}/backups/files")
def list_vm_files(vm_id: VmId, ctx: Ctx) -> Response:
    return _list(ctx, backups.list_for_vm(ctx.db, ctx.user, vm_id, "files"))


@router.get("/settings/disks/{disk_id}/backups")
def list_disk_backups(disk_id: Id, ctx: Ctx) -> Response:
    return _list(ctx, backups.list_for_disk(ctx.db, ctx.user, disk_id))


@router.get("/virtual_machines/{vm_id}/disks/{disk_id}/backups")
def list_vm_disk_backups(vm_id: VmId, disk_id: Id, ctx: Ctx) -> Response:
    return _list(ctx, backups.list_for_disk(ctx.db, ctx.user, disk_id, vm_id=vm_id))


@router.get("/users/{user_id}/backups")
def list_user_backups(user_id: Id, ctx: Ctx) -> Response:
    return _list(ctx, backups.list_for_user(ctx.db, ctx.user, user_id))


@router.get("/backups/{backup_id}")
def get_backup(backup_id: Id, ctx: Ctx) -> Response:
    return ctx.one(ROOT, presenters.backup(backups.get_backup(ctx.db, ctx.user, backup_id)))


@router.put("/backups/{backup_id}", status_code=204, openapi_extra=openapi_body(ROOT, BackupNote))
def edit_note(backup_id: Id, ctx: Ctx, data: Annotated[BackupNote, body(ROOT, BackupNote)]) -> Response:
    backups.edit(ctx.db, ctx.user, backup_id, data.model_dump(exclude_unset=True))
    return formats.no_content()


@router.put(
    "/virtual_machines/{vm_id}/backups/{backup_id}", status_code=204, openapi_extra=openapi_body(ROOT, BackupNote)
)
def edit_vm_backup_note(
    vm_id: VmId, backup_id: Id, ctx: Ctx, data: Annotated[BackupNote, body(ROOT, BackupNote)]
) -> Response:
    backups.edit(ctx.db, ctx.user, backup_id, data.model_dump(exclude_unset=True), vm_id=vm_id)
    return formats.no_content()


async def note_of(request: Request) -> str | None:
    note = (await read_lenient(request, ROOT, "note")).get("note")
    return note if isinstance(note, str) else None


NoteDep = Annotated[str | None, Depends(note_of)]


@router.post("/settings/disks/{disk_id}/backups", status_code=201)
def take_normal_backup(disk_id: Id, ctx: Ctx, note: NoteDep) -> Response:
    backup, tx = actions.take_normal(ctx.db, ctx.user, disk_id, note)
    ctx.queued(tx)
    return ctx.one(ROOT, presenters.backup(backup), 201)


@router.post("/virtual_machines/{vm_id}/backups", status_code=201)
def take_incremental_backup(vm_id: VmId, ctx: Ctx, note: NoteDep) -> Response:
    backup, tx = actions.take_incremental(ctx.db, ctx.user, vm_id, note)
    ctx.queued(tx)
    return ctx.one(ROOT, presenters.backup(backup), 201)


@router.post("/backups/{backup_id}/restore", status_code=201)
def restore_backup(backup_id: Id, ctx: Ctx) -> Response:
    ctx.queued(actions.restore(ctx.db, ctx.user, backup_id))  # any body is ignored: clients send stale ones
    return ctx.one(ROOT, presenters.backup(backups.get_backup(ctx.db, ctx.user, backup_id)), 201)


@router.post("/backups/{backup_id}/convert", status_code=201, openapi_extra=openapi_body(ROOT, BackupConvert))
def convert_backup(backup_id: Id, ctx: Ctx, data: Annotated[BackupConvert, body(ROOT, BackupConvert)]) -> Response:
    template, tx = actions.convert(ctx.db, ctx.user, backup_id, data.label)
    ctx.queued(tx)
    return ctx.one("image_template", presenters.template(template), 201)


@router.delete("/backups/{backup_id}", status_code=204)
def delete_backup(backup_id: Id, ctx: Ctx) -> Response:
    ctx.queued(actions.delete(ctx.db, ctx.user, backup_id))
    return formats.no_content()
