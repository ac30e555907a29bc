"""ASGI factories the API benchmark starts under uvicorn (``--factory --app-dir bench/api asgi_apps:<name>``).

- ``real``: the service exactly as ``vmbackup serve`` builds it, ``create_app(load_settings())`` from VMBACKUP_*.
- ``noauth``: the same app with ``get_context`` overridden to build the Context for a fixed user (id in
  BENCH_FIXED_USER_ID, loaded once at start) without looking at the credentials: bench-only, never in src/.
- ``bare``: a minimal ASGI callable answering every request with the body in BENCH_BARE_BODY (a file) and the
  headers in BENCH_BARE_HEADERS (a JSON list of [name, value]): the ceiling of the server software itself.
"""

import json
import os
from pathlib import Path
from typing import Any


def real() -> Any:
    from vmbackup.api.app import create_app
    from vmbackup.config import load_settings

    return create_app(load_settings())


def noauth() -> Any:
    # No ``from __future__ import annotations`` in this module: FastAPI must see the real annotation objects of
    # the override below, which are local names.
    from fastapi import Request

    from vmbackup.api import deps
    from vmbackup.api.app import create_app
    from vmbackup.config import load_settings
    from vmbackup.db.models import User

    app = create_app(load_settings())
    with app.state.sessions() as db:
        user = db.get(User, int(os.environ["BENCH_FIXED_USER_ID"]))
        assert user is not None
        db.expunge(user)  # detached, every column loaded (expire_on_commit=False): read-only use below
    zone = deps._zone(user.time_zone)

    def fixed_context(request: Request, db: deps.DbDep) -> deps.Context:
        return deps.Context(db=db, user=user, fmt=request.state.fmt, tz=zone, queue=request.app.state.queue)

    app.dependency_overrides[deps.get_context] = fixed_context
    return app


def bare() -> Any:
    body = Path(os.environ["BENCH_BARE_BODY"]).read_bytes()
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in json.loads(os.environ["BENCH_BARE_HEADERS"])]
    start = {"type": "http.response.start", "status": 200, "headers": headers}
    body_msg = {"type": "http.response.body", "body": body}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send(start)
        await send(body_msg)

    return app
