from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from starlette.responses import Response

from vmbackup.api import formats, presenters
from vmbackup.api.body import body, openapi_body
from vmbackup.api.deps import AdminCtx, Ctx, Id
from vmbackup.api.schemas import VirtualMachineCreate, VirtualMachineUpdate
from vmbackup.services import machines

router = APIRouter(tags=["virtual machines"])
ROOT = "virtual_machine"


@router.get("/virtual_machines")
def list_vms(ctx: Ctx) -> Response:
    return ctx.many(ROOT, map(presenters.virtual_machine, machines.list_vms(ctx.db, ctx.user)))


@router.get("/users/{user_id}/virtual_machines")
def list_user_vms(user_id: Id, ctx: Ctx) -> Response:
    return ctx.many(ROOT, map(presenters.virtual_machine, machines.list_vms(ctx.db, ctx.user, owner_id=user_id)))


@router.post("/virtual_machines", status_code=201, openapi_extra=openapi_body(ROOT, VirtualMachineCreate))
def create_vm(ctx: AdminCtx, data: Annotated[VirtualMachineCreate, body(ROOT, VirtualMachineCreate)]) -> Response:
    return ctx.one(ROOT, presenters.virtual_machine(machines.create_vm(ctx.db, ctx.user, data.model_dump())), 201)


@router.get("/virtual_machines/{vm_id}")
def get_vm(vm_id: Id, ctx: Ctx) -> Response:
    return ctx.one(ROOT, presenters.virtual_machine(machines.get_vm(ctx.db, ctx.user, vm_id)))


@router.put("/virtual_machines/{vm_id}", status_code=204, openapi_extra=openapi_body(ROOT, VirtualMachineUpdate))
def update_vm(
    vm_id: Id, ctx: AdminCtx, data: Annotated[VirtualMachineUpdate, body(ROOT, VirtualMachineUpdate)]
) -> Response:
    machines.update_vm(ctx.db, ctx.user, vm_id, data.model_dump(exclude_unset=True))
    return formats.no_content()


@router.delete("/virtual_machines/{vm_id}", status_code=204)
def delete_vm(vm_id: Id, ctx: Ctx) -> Response:
    machines.delete_vm(ctx.db, ctx.user, vm_id)
    return formats.no_content()
