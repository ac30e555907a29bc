"""Application factory: ``create_app(settings)`` builds a service with its own database and storage."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import anyio.to_thread
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from vmbackup import __version__
from vmbackup.api import errors
from vmbackup.api.listing_cache import ListingCache, ListingCacheMiddleware
from vmbackup.api.middleware import OnAppMiddleware
from vmbackup.api.routes import (
    autobackups,
    backup_server_zones,
    backup_servers,
    backups,
    data_stores,
    disks,
    hypervisor_zones,
    hypervisors,
    schedules,
    templates,
    transactions,
    users,
    version,
    virtual_machines,
)
from vmbackup.config import Settings
from vmbackup.db.changes import ChangeClock, change_feed, track_commits
from vmbackup.db.migrate import upgrade
from vmbackup.db.session import make_engine, make_session_factory
from vmbackup.jobs.procrastinate_queue import ProcrastinateQueue, ProcrastinateRunner
from vmbackup.jobs.queue import JobQueue
from vmbackup.jobs.scheduler import make_scheduler
from vmbackup.jobs.worker import Worker
from vmbackup.services import catalog, machines, quotas, tasks
from vmbackup.services.auth import Authenticator, LoginThrottle
from vmbackup.services.bootstrap import first_start

log = logging.getLogger("vmbackup")

ROUTERS = [
    version,
    users,
    templates,
    data_stores,
    backup_servers,
    backup_server_zones,
    hypervisors,
    hypervisor_zones,
    virtual_machines,
    disks,
    backups,
    transactions,
    schedules,
    autobackups,
]


class Service(FastAPI):
    """FastAPI with the OnApp front door (path and format resolution, body limit, listing cache) in front of
    Starlette's own middleware stack rather than inside it.

    Why: the framework's outer layers (error middleware, telemetry switch read from the environment, body limit)
    cost more per request than a listing served from memory does; in front of them a cached listing takes ~9 us
    of Python instead of ~18 (bench/api_bench.py, target 1). Anything the front door does not answer itself goes
    through the whole stack as before, so handler errors still get FastAPI's handling.
    """

    front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is not None and scope["type"] == "http":
            await self.front(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    def install_front(self, settings: Settings, cache: ListingCache | None) -> None:
        inner: ASGIApp = partial(FastAPI.__call__, self)
        if cache is not None:
            inner = ListingCacheMiddleware(inner, cache)
        self.front = OnAppMiddleware(inner, max_body_bytes=settings.max_body_bytes)


def create_app(settings: Settings) -> Service:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    auth = Authenticator(
        memory_kib=settings.password_memory_kib, time_cost=settings.password_time_cost, ttl=settings.auth_cache_seconds
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        worker, scheduler, clock = app.state.worker, app.state.scheduler, app.state.changes
        if clock is not None:
            clock.feed.start()
        if worker is not None:
            worker.start()
        if scheduler is not None:
            scheduler.start()
        try:
            yield
        finally:
            if scheduler is not None:
                await asyncio.to_thread(scheduler.stop)
            if worker is not None:
                # In a thread: both kinds wait for the transactions they run, and the procrastinate one needs
                # this event loop free to wind down.
                await asyncio.to_thread(worker.stop)
            if clock is not None:
                await asyncio.to_thread(clock.feed.stop)
            engine.dispose()

    # Start-up order: migrate, seed, then serve. Done here (not in lifespan) so a broken database stops
    # start-up at once with its reason, and tests get a ready app without running the lifespan.
    upgrade(engine)
    sessions = make_session_factory(engine)
    machines.bind_image_roots(sessions, settings.image_roots)
    tasks.bind_scratch_dir(sessions, settings.data_dir.resolve() / "scratch")
    quotas.bind_limit(sessions, settings.max_queued_per_user)
    catalog.bind_data_dir(sessions, settings.data_dir.resolve())  # backup servers created with no storage_path
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

    app = Service(
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
    app.state.throttle = LoginThrottle(max_failures=settings.login_failures_per_minute, window=60.0)
    app.state.worker, app.state.queue = _delivery(settings, engine, sessions)
    # SQLite: the embedded scheduler thread runs in every `serve`. PostgreSQL: it runs as procrastinate periodic
    # tasks inside the workers (see jobs/procrastinate_queue.py).
    app.state.scheduler = None if settings.is_postgres else make_scheduler(settings, sessions, app.state.queue)
    for module in ROUTERS:
        app.include_router(module.router)
    errors.install(app)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.state.changes = _change_clock(settings, sessions)
    app.state.listing_cache = _listing_cache(settings, app.state.changes, app.state.throttle)
    app.install_front(settings, app.state.listing_cache)
    return app


def _client_gone(request: Request, exc: Exception) -> Response:
    # The client closed the connection (or api/serving.py closed it: body not received in time) while its handler
    # read the body: nobody is left to answer, and it is no server error to log with a traceback.
    log.debug("client went away before sending its whole body: %s %s", request.method, request.url.path)
    return Response(status_code=400)


def _change_clock(settings: Settings, sessions: sessionmaker[Session]) -> ChangeClock | None:
    """What the listing cache and the credential cache check their entries against (None: nothing is kept)."""
    feed = change_feed(settings.database_url)
    if feed is None or settings.auth_cache_seconds <= 0:
        return None
    clock = ChangeClock(feed)
    track_commits(sessions, clock.bump)
    return clock


def _listing_cache(settings: Settings, clock: ChangeClock | None, throttle: LoginThrottle) -> ListingCache | None:
    ttl = min(settings.listing_cache_seconds, settings.auth_cache_seconds)
    if ttl <= 0 or clock is None:
        return None
    return ListingCache(clock, throttle, ttl=ttl, max_bytes=settings.listing_cache_mib * 1024 * 1024)


def _delivery(
    settings: Settings, engine: Engine, sessions: sessionmaker[Session]
) -> tuple[Worker | ProcrastinateRunner | None, JobQueue | None]:
    """(the worker this process runs or None, how queued transactions are delivered or None).

    SQLite: the transactions table is the queue; "inprocess" runs the polling worker here, "external" leaves the
    table to `vmbackup worker` processes, which poll it. PostgreSQL: transactions are deferred as procrastinate
    jobs either way; "inprocess" also runs a procrastinate worker in this process's event loop."""
    if not settings.is_postgres:
        worker = Worker(sessions, concurrency=settings.worker_concurrency) if settings.worker == "inprocess" else None
        return worker, worker
    if settings.worker == "inprocess":
        runner = ProcrastinateRunner(
            settings.database_url,
            engine,
            sessions,
            concurrency=settings.worker_concurrency,
            scheduler=make_scheduler(settings, sessions, None),
        )
        return runner, runner.queue
    return None, ProcrastinateQueue(engine)
