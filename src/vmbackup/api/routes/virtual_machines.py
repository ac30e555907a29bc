"""Virtual machines (root ``virtual_machine``), their status and their IP addresses. Every ``{vm_id}`` is the VM's
number or its 14-character identifier (api/deps.py ``VmId``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from vmbackup.api import formats, presenters
from vmbackup.api.body import body, openapi_body
from vmbackup.api.deps import AdminCtx, Ctx, Id, VmId
from vmbackup.api.schemas import IpAddressCreate, VirtualMachineCreate, VirtualMachineUpdate
from vmbackup.services import machines

router = APIRouter(tags=["virtual machines"])
ROOT = "virtual_machine"
IP_ROOT = "ip_address"


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
def get_vm(vm_id: VmId, ctx: Ctx) -> Response:
    return ctx.one(ROOT, presenters.virtual_machine(machines.get_vm(ctx.db, ctx.user, vm_id)))


@router.get("/virtual_machines/{vm_id}/status")
def vm_status(vm_id: VmId, ctx: Ctx) -> Response:
    return ctx.one(ROOT, presenters.vm_status(machines.get_vm(ctx.db, ctx.user, vm_id)))


# Admin-only routes take the admin check first: a user hears 403 whether or not the identifier names a VM.
@router.put("/virtual_machines/{vm_id}", status_code=204, openapi_extra=openapi_body(ROOT, VirtualMachineUpdate))
def update_vm(
    ctx: AdminCtx, vm_id: VmId, data: Annotated[VirtualMachineUpdate, body(ROOT, VirtualMachineUpdate)]
) -> Response:
    machines.update_vm(ctx.db, ctx.user, vm_id, data.model_dump(exclude_unset=True))
    return formats.no_content()


@router.delete("/virtual_machines/{vm_id}", status_code=204)
def delete_vm(
    ctx: AdminCtx,
    vm_id: VmId,
    destroy_all_backups: Annotated[str, Query()] = "0",
    convert_last_backup: Annotated[str, Query()] = "0",
) -> Response:
    """OnApp's parameters: ``destroy_all_backups=1`` queues the deletion of the VM's backups (otherwise they are
    kept, restorable to a new path); ``convert_last_backup`` is accepted and ignored (no template is made)."""
    for tx in machines.delete_vm(ctx.db, ctx.user, vm_id, destroy_all_backups=destroy_all_backups in {"1", "true"}):
        ctx.queued(tx)
    return formats.no_content()


@router.get("/virtual_machines/{vm_id}/ip_addresses")
def list_ips(vm_id: VmId, ctx: Ctx) -> Response:
    vm, ips = machines.list_ips(ctx.db, ctx.user, vm_id)
    return ctx.many(IP_ROOT, (presenters.ip_address(ip, vm) for ip in ips))


@router.post(
    "/virtual_machines/{vm_id}/ip_addresses", status_code=201, openapi_extra=openapi_body(IP_ROOT, IpAddressCreate)
)
def add_ip(ctx: AdminCtx, vm_id: VmId, data: Annotated[IpAddressCreate, body(IP_ROOT, IpAddressCreate)]) -> Response:
    vm, ip = machines.add_ip(ctx.db, ctx.user, vm_id, data.model_dump())
    return ctx.one(IP_ROOT, presenters.ip_address(ip, vm), 201)


@router.delete("/virtual_machines/{vm_id}/ip_addresses/{ip_id}", status_code=204)
def delete_ip(ctx: AdminCtx, vm_id: VmId, ip_id: Id) -> Response:
    machines.delete_ip(ctx.db, ctx.user, vm_id, ip_id)
    return formats.no_content()
