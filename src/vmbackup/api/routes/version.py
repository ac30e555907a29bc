from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from vmbackup.api import presenters
from vmbackup.api.deps import Ctx
from vmbackup.services import space

router = APIRouter(tags=["version"])

# Clients pick their field set from this; 6.6+ makes the public PHP wrapper refuse to work.
ONAPP_VERSION = "6.5.0"


@router.get("/version")
def version(ctx: Ctx) -> Response:
    return ctx.hash({"version": ONAPP_VERSION})


@router.get("/profile")
def profile(ctx: Ctx) -> Response:
    return ctx.one("user", presenters.user(ctx.user, space.used_kb(ctx.db, ctx.user.id)))
