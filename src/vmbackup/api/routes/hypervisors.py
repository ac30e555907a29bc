"""Hypervisors (OnApp root ``hypervisor``), admin only; ``online`` says whether a live worker serves one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from starlette.responses import Response

from vmbackup.api import formats, presenters
from vmbackup.api.body import body, openapi_body
from vmbackup.api.deps import AdminCtx, Id
from vmbackup.api.routes._joins import add_join_routes
from vmbackup.api.schemas import HypervisorCreate, HypervisorUpdate
from vmbackup.services import hypervisors

router = APIRouter(prefix="/settings/hypervisors", tags=["hypervisors"])
ROOT = "hypervisor"


@router.get("")
def list_hypervisors(ctx: AdminCtx) -> Response:
    return ctx.many(ROOT, (presenters.hypervisor(h, on) for h, on in hypervisors.list_hypervisors(ctx.db, ctx.user)))


@router.post("", status_code=201, openapi_extra=openapi_body(ROOT, HypervisorCreate))
def create_hypervisor(ctx: AdminCtx, data: Annotated[HypervisorCreate, body(ROOT, HypervisorCreate)]) -> Response:
    hypervisor, online = hypervisors.create_hypervisor(ctx.db, ctx.user, data.model_dump())
    return ctx.one(ROOT, presenters.hypervisor(hypervisor, online), 201)


@router.get("/{hypervisor_id}")
def get_hypervisor(ctx: AdminCtx, hypervisor_id: Id) -> Response:
    return ctx.one(ROOT, presenters.hypervisor(*hypervisors.get_hypervisor(ctx.db, ctx.user, hypervisor_id)))


@router.put("/{hypervisor_id}", status_code=204, openapi_extra=openapi_body(ROOT, HypervisorUpdate))
def update_hypervisor(
    ctx: AdminCtx, hypervisor_id: Id, data: Annotated[HypervisorUpdate, body(ROOT, HypervisorUpdate)]
) -> Response:
    hypervisors.update_hypervisor(ctx.db, ctx.user, hypervisor_id, data.model_dump(exclude_unset=True))
    return formats.no_content()


@router.delete("/{hypervisor_id}", status_code=204)
def delete_hypervisor(ctx: AdminCtx, hypervisor_id: Id) -> Response:
    hypervisors.delete_hypervisor(ctx.db, ctx.user, hypervisor_id)
    return formats.no_content()


add_join_routes(router, hypervisors.HYPERVISOR, "hypervisor_id")
