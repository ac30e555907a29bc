"""Auto-backup schedules (root ``schedule``), their logs, and the per-disk / per-VM schedule lists."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from starlette.responses import Response

from vmbackup.api import formats, presenters
from vmbackup.api.body import body, openapi_body
from vmbackup.api.deps import Ctx, Id, VmId
from vmbackup.api.schemas import ScheduleCreate, ScheduleUpdate
from vmbackup.services import schedules

router = APIRouter(tags=["schedules"])
ROOT = "schedule"


def _periods(request: Request) -> tuple[str, ...]:
    minutes = ("minutes",) if request.app.state.settings.schedule_minutes else ()
    return ("days", "weeks", "months", "years", *minutes)


def _list(ctx: Ctx, items: list) -> Response:  # type: ignore[type-arg]
    return ctx.many(ROOT, map(presenters.schedule, items))


@router.get("/settings/schedules")
def list_schedules(ctx: Ctx) -> Response:
    return _list(ctx, schedules.list_schedules(ctx.db, ctx.user))


@router.get("/settings/disks/{disk_id}/schedules")
def list_disk_schedules(disk_id: Id, ctx: Ctx) -> Response:
    return _list(ctx, schedules.list_schedules(ctx.db, ctx.user, "Disk", disk_id))


@router.get("/virtual_machines/{vm_id}/schedules")
def list_vm_schedules(vm_id: VmId, ctx: Ctx) -> Response:
    return _list(ctx, schedules.list_schedules(ctx.db, ctx.user, "VirtualMachine", vm_id))


def _create(ctx: Ctx, request: Request, data: ScheduleCreate, **target: object) -> Response:
    fields = {**data.model_dump(), **target}
    return ctx.one(
        ROOT, presenters.schedule(schedules.create_schedule(ctx.db, ctx.user, fields, _periods(request))), 201
    )


@router.post("/settings/schedules", status_code=201, openapi_extra=openapi_body(ROOT, ScheduleCreate))
def create_schedule(
    request: Request, ctx: Ctx, data: Annotated[ScheduleCreate, body(ROOT, ScheduleCreate)]
) -> Response:
    return _create(ctx, request, data)


@router.post("/settings/disks/{disk_id}/schedules", status_code=201, openapi_extra=openapi_body(ROOT, ScheduleCreate))
def create_disk_schedule(
    disk_id: Id, request: Request, ctx: Ctx, data: Annotated[ScheduleCreate, body(ROOT, ScheduleCreate)]
) -> Response:
    return _create(ctx, request, data, target_type="Disk", target_id=disk_id)


@router.post("/virtual_machines/{vm_id}/schedules", status_code=201, openapi_extra=openapi_body(ROOT, ScheduleCreate))
def create_vm_schedule(
    vm_id: VmId, request: Request, ctx: Ctx, data: Annotated[ScheduleCreate, body(ROOT, ScheduleCreate)]
) -> Response:
    return _create(ctx, request, data, target_type="VirtualMachine", target_id=vm_id)


@router.get("/settings/schedules/{schedule_id}")
def get_schedule(schedule_id: Id, ctx: Ctx) -> Response:
    schedule = schedules.get_schedule(ctx.db, ctx.user, schedule_id)
    logs = [
        {"schedule_log": presenters.schedule_log(x)} for x in schedules.schedule_logs(ctx.db, ctx.user, schedule_id)
    ]
    return ctx.one(ROOT, {**presenters.schedule(schedule), "schedule_logs": logs})


@router.get("/settings/schedules/{schedule_id}/schedule_logs")
def list_schedule_logs(schedule_id: Id, ctx: Ctx) -> Response:
    return ctx.many(
        "schedule_log", map(presenters.schedule_log, schedules.schedule_logs(ctx.db, ctx.user, schedule_id))
    )


@router.put("/settings/schedules/{schedule_id}", status_code=204, openapi_extra=openapi_body(ROOT, ScheduleUpdate))
def update_schedule(
    schedule_id: Id, request: Request, ctx: Ctx, data: Annotated[ScheduleUpdate, body(ROOT, ScheduleUpdate)]
) -> Response:
    schedules.update_schedule(ctx.db, ctx.user, schedule_id, data.model_dump(exclude_unset=True), _periods(request))
    return formats.no_content()


@router.delete("/settings/schedules/{schedule_id}", status_code=204)
def delete_schedule(schedule_id: Id, ctx: Ctx) -> Response:
    schedules.delete_schedule(ctx.db, ctx.user, schedule_id)
    return formats.no_content()
