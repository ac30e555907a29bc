"""The five admin CRUD routes shared by settings resources that have nothing special about them."""

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter
from starlette.responses import Response

from vmbackup.api import formats
from vmbackup.api.body import InputModel, body, openapi_body
from vmbackup.api.deps import AdminCtx, Context, Ctx, Id
from vmbackup.db.models import Base
from vmbackup.services import catalog

Presenter = Callable[[Any], dict[str, Any]]


def each(present: Presenter) -> Callable[[Context], Presenter]:
    """The same presenter for every request: a resource shown from its row alone."""
    return lambda ctx: present


def add_crud_routes(
    router: APIRouter,
    root: str,
    model: type[Base],
    presenter: Callable[[Context], Presenter],
    create: type[InputModel],
    update: type[InputModel],
) -> None:
    """``presenter(ctx)`` gives the request's presenter: ``each(...)`` for most, or one made per request for fields
    a row does not hold (a backup server's ``cpu_idle``, read once per request)."""
    name = root + "s"

    def list_all(ctx: Ctx) -> Response:
        return ctx.many(root, map(presenter(ctx), catalog.list_all(ctx.db, ctx.user, model)))

    def create_one(ctx: AdminCtx, data: Annotated[Any, body(root, create)]) -> Response:
        return ctx.one(root, presenter(ctx)(catalog.create(ctx.db, ctx.user, model, data.model_dump())), 201)

    def get_one(id: Id, ctx: Ctx) -> Response:
        return ctx.one(root, presenter(ctx)(catalog.get(ctx.db, ctx.user, model, id)))

    def update_one(id: Id, ctx: AdminCtx, data: Annotated[Any, body(root, update)]) -> Response:
        catalog.update(ctx.db, ctx.user, model, id, data.model_dump(exclude_unset=True))
        return formats.no_content()

    def delete_one(id: Id, ctx: Ctx) -> Response:
        catalog.delete(ctx.db, ctx.user, model, id)
        return formats.no_content()

    router.add_api_route("", list_all, methods=["GET"], name=f"list_{name}")
    router.add_api_route(
        "",
        create_one,
        methods=["POST"],
        status_code=201,
        name=f"create_{root}",
        openapi_extra=openapi_body(root, create),
    )
    router.add_api_route("/{id}", get_one, methods=["GET"], name=f"get_{root}")
    router.add_api_route(
        "/{id}",
        update_one,
        methods=["PUT"],
        status_code=204,
        name=f"update_{root}",
        openapi_extra=openapi_body(root, update),
    )
    router.add_api_route("/{id}", delete_one, methods=["DELETE"], status_code=204, name=f"delete_{root}")
