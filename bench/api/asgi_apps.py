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


def bare_map() -> Any:
    """Like ``bare``, but one answer per path: BENCH_BARE_MAP is a pickle of {raw path: (headers, body)}, every
    path the fleet benchmark requests with the bytes and headers the real service answered it with."""
    import pickle

    with open(os.environ["BENCH_BARE_MAP"], "rb") as f:
        answers = pickle.load(f)
    table = {
        path.encode(): (
            {"type": "http.response.start", "status": 200, "headers": [(k.encode(), v.encode()) for k, v in headers]},
            {"type": "http.response.body", "body": body},
        )
        for path, (headers, body) in answers.items()
    }
    missing = (
        {"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]},
        {"type": "http.response.body", "body": b""},
    )

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        start, body = table.get(scope["raw_path"], missing)
        await send(start)
        await send(body)

    return app


def real_gc_log() -> Any:
    """``real`` plus a log of every garbage collection's pause (gc.callbacks) to BENCH_GC_LOG at exit: to see
    whether collections are what the slowest requests wait for."""
    import atexit
    import gc
    import time

    app = real()
    pauses: list[tuple[int, float]] = []
    started: list[float] = [0.0]

    def cb(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], time.perf_counter() - started[0]))

    gc.callbacks.append(cb)

    def dump() -> None:
        with open(os.environ["BENCH_GC_LOG"], "w") as f:
            for gen, s in pauses:
                f.write(f"{gen} {s * 1000:.3f}\n")

    atexit.register(dump)
    return app


def real_slowpoll() -> Any:
    """``real`` with SQLite's data_version poller at 1 s instead of 10 ms (experiment: does the poller thread's
    waking, with its GIL hand-offs, make the event loop's tail?)."""
    from vmbackup.db import changes

    init = changes.SqliteChanges.__init__

    def slow(self: Any, path: str, **kw: Any) -> None:
        init(self, path, **{**kw, "poll_seconds": 1.0})

    changes.SqliteChanges.__init__ = slow  # type: ignore[method-assign]
    return real()
