"""Hypervisor zones (OnApp root ``hypervisor_group``), admin only, and the backup servers joined to them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from starlette.responses import Response

from vmbackup.api import formats, presenters
from vmbackup.api.body import body, openapi_body
from vmbackup.api.deps import AdminCtx, Id
from vmbackup.api.routes._joins import add_join_routes
from vmbackup.api.schemas import HypervisorZoneCreate, HypervisorZoneUpdate
from vmbackup.services import hypervisors

router = APIRouter(prefix="/settings/hypervisor_zones", tags=["hypervisor zones"])
ROOT = "hypervisor_group"


@router.get("")
def list_zones(ctx: AdminCtx) -> Response:
    return ctx.many(ROOT, map(presenters.hypervisor_zone, hypervisors.list_zones(ctx.db, ctx.user)))


@router.post("", status_code=201, openapi_extra=openapi_body(ROOT, HypervisorZoneCreate))
def create_zone(ctx: AdminCtx, data: Annotated[HypervisorZoneCreate, body(ROOT, HypervisorZoneCreate)]) -> Response:
    return ctx.one(ROOT, presenters.hypervisor_zone(hypervisors.create_zone(ctx.db, ctx.user, data.model_dump())), 201)


@router.get("/{hypervisor_zone_id}")
def get_zone(ctx: AdminCtx, hypervisor_zone_id: Id) -> Response:
    return ctx.one(ROOT, presenters.hypervisor_zone(hypervisors.get_zone(ctx.db, ctx.user, hypervisor_zone_id)))


@router.put("/{hypervisor_zone_id}", status_code=204, openapi_extra=openapi_body(ROOT, HypervisorZoneUpdate))
def update_zone(
    ctx: AdminCtx, hypervisor_zone_id: Id, data: Annotated[HypervisorZoneUpdate, body(ROOT, HypervisorZoneUpdate)]
) -> Response:
    hypervisors.update_zone(ctx.db, ctx.user, hypervisor_zone_id, data.model_dump(exclude_unset=True))
    return formats.no_content()


@router.delete("/{hypervisor_zone_id}", status_code=204)
def delete_zone(ctx: AdminCtx, hypervisor_zone_id: Id) -> Response:
    hypervisors.delete_zone(ctx.db, ctx.user, hypervisor_zone_id)
    return formats.no_content()


add_join_routes(router, hypervisors.ZONE, "hypervisor_zone_id")
