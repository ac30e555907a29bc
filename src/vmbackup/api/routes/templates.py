from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from starlette.responses import Response

from vmbackup.api import formats, presenters
from vmbackup.api.body import body, openapi_body
from vmbackup.api.deps import AdminCtx, Ctx, Id
from vmbackup.api.schemas import TemplateCreate
from vmbackup.db.models import ImageTemplate
from vmbackup.services import catalog

router = APIRouter(tags=["templates"])


@router.get("/templates")
def list_templates(ctx: Ctx) -> Response:
    return ctx.many("image_template", map(presenters.template, catalog.list_all(ctx.db, ctx.user, ImageTemplate)))


@router.post("/templates", status_code=201, openapi_extra=openapi_body("image_template", TemplateCreate))
def create_template(ctx: AdminCtx, data: Annotated[TemplateCreate, body("image_template", TemplateCreate)]) -> Response:
    template = catalog.create(ctx.db, ctx.user, ImageTemplate, data.model_dump())
    return ctx.one("image_template", presenters.template(template), 201)


@router.get("/templates/{template_id}")
def get_template(template_id: Id, ctx: Ctx) -> Response:
    return ctx.one("image_template", presenters.template(catalog.get(ctx.db, ctx.user, ImageTemplate, template_id)))


@router.delete("/templates/{template_id}", status_code=204)
def delete_template(template_id: Id, ctx: Ctx) -> Response:
    tx = catalog.delete_template(ctx.db, ctx.user, template_id)
    if tx is not None:  # a converted template: its archive is removed by a transaction
        ctx.queued(tx)
    return formats.no_content()
