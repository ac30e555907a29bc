"""Application factory: ``create_app(settings)`` builds a service with its own database and storage."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from vmbackup import __version__
from vmbackup.api import errors
from vmbackup.api.middleware import OnAppMiddleware
from vmbackup.api.routes import (
    backup_servers,
    backups,
    data_stores,
    disks,
    templates,
    transactions,
    users,
    version,
    virtual_machines,
)
from vmbackup.config import Settings
from vmbackup.db.migrate import upgrade
from vmbackup.db.session import make_engine, make_session_factory
from vmbackup.jobs.worker import Worker
from vmbackup.services.auth import Authenticator
from vmbackup.services.bootstrap import first_start

log = logging.getLogger("vmbackup")

ROUTERS = [version, users, templates, data_stores, backup_servers, virtual_machines, disks, backups, transactions]


def create_app(settings: Settings) -> FastAPI:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    auth = Authenticator(
        memory_kib=settings.password_memory_kib, time_cost=settings.password_time_cost, ttl=settings.auth_cache_seconds
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = app.state.worker
        if worker is not None:
            worker.start()
        try:
            yield
        finally:
            if worker is not None:
                worker.stop()
            engine.dispose()

    # Start-up order: migrate, seed, then serve. Done here (not in lifespan) so a broken database stops
    # start-up at once with its reason, and tests get a ready app without running the lifespan.
    upgrade(engine)
    sessions = make_session_factory(engine)
    with sessions() as db:
        generated = first_start(
            db,
            auth,
            login=settings.admin_login,
            email=settings.admin_email,
            password=settings.admin_password,
            storage_dir=settings.storage_dir,
        )
    if generated:
        # Printed once, on the first start only; the stored form is an argon2 hash.
        print(f"vmbackup: created admin account {settings.admin_login!r} with password {generated}", flush=True)

    app = FastAPI(
        title="vmbackup",
        version=__version__,
        lifespan=lifespan,
        openapi_url="/openapi",
        docs_url="/docs",
        redoc_url=None,
        description="OnApp-compatible backup API. Every path also answers with a .json or .xml suffix.",
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = sessions
    app.state.auth = auth
    # The embedded default runs transactions in this process; "external" leaves them to `vmbackup worker`.
    app.state.worker = (
        Worker(sessions, concurrency=settings.worker_concurrency) if settings.worker == "inprocess" else None
    )
    for module in ROUTERS:
        app.include_router(module.router)
    errors.install(app)
    app.add_middleware(OnAppMiddleware, max_body_bytes=settings.max_body_bytes)
    return app
