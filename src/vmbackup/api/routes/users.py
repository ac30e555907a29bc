from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from starlette.responses import Response

from vmbackup.api import formats, presenters
from vmbackup.api.body import body, openapi_body
from vmbackup.api.deps import AdminCtx, AuthDep, Ctx, Id
from vmbackup.api.schemas import UserCreate, UserUpdate
from vmbackup.db.models import User
from vmbackup.services import space, users

router = APIRouter(tags=["users"])


@router.get("/users")
def list_users(ctx: Ctx) -> Response:
    found = users.list_users(ctx.db, ctx.user)
    used = space.used_kb_of(ctx.db, [u.id for u in found])
    return ctx.many("user", (presenters.user(u, used.get(u.id, 0)) for u in found))


@router.post("/users", status_code=201, openapi_extra=openapi_body("user", UserCreate))
def create_user(ctx: AdminCtx, auth: AuthDep, data: Annotated[UserCreate, body("user", UserCreate)]) -> Response:
    user = users.create_user(ctx.db, ctx.user, auth, data.model_dump())
    return _one(ctx, user, 201)


@router.get("/users/{user_id}")
def get_user(user_id: Id, ctx: Ctx) -> Response:
    return _one(ctx, users.get_user(ctx.db, ctx.user, user_id))


@router.put("/users/{user_id}", status_code=204, openapi_extra=openapi_body("user", UserUpdate))
def update_user(
    user_id: Id, ctx: Ctx, auth: AuthDep, data: Annotated[UserUpdate, body("user", UserUpdate)]
) -> Response:
    users.update_user(ctx.db, ctx.user, auth, user_id, data.model_dump(exclude_unset=True))
    return formats.no_content()


@router.delete("/users/{user_id}", status_code=204)
def delete_user(user_id: Id, ctx: Ctx) -> Response:
    users.delete_user(ctx.db, ctx.user, user_id)
    return formats.no_content()


@router.post("/users/{user_id}/make_new_api_key", status_code=200)
def make_new_api_key(user_id: Id, ctx: Ctx) -> Response:
    user, key = users.make_api_key(ctx.db, ctx.user, user_id)
    # The only time the key is shown: it is stored hashed.
    return ctx.one("user", {**_present(ctx, user), "api_key": key})


def _present(ctx: Ctx, user: User) -> dict[str, Any]:
    return presenters.user(user, space.used_kb(ctx.db, user.id))


def _one(ctx: Ctx, user: User, status: int = 200) -> Response:
    return ctx.one("user", _present(ctx, user), status)
