"""The ``vmbackup`` command: ``serve``, ``worker``, ``migrate``, ``backups`` and the standalone ``store`` group.

Domain errors become exit codes here and only here (each error class carries its ``exit_code``).
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import click

from vmbackup.cli.backups import backups
from vmbackup.cli.store import store
from vmbackup.errors import DatabaseUnavailable, VmbackupError

if TYPE_CHECKING:
    from vmbackup.config import Settings

# Settings (pydantic-settings, ~0.12 s of the CLI's ~0.18 s of imports: `python -X importtime`) are imported
# by the commands that use them: `vmbackup store ...` needs none, and the benchmarks time every step with it.


def _settings() -> Settings:
    from vmbackup.config import SettingsError, load_settings

    try:
        return load_settings()
    except SettingsError as exc:
        click.echo(f"vmbackup: {exc}", err=True)
        sys.exit(2)


@click.group()
@click.version_option(package_name="vmbackup")
def cli() -> None:
    """vmbackup: VM disk backups behind an OnApp-compatible REST API."""


@cli.command()
def serve() -> None:
    """Run the API (and, on the embedded default, the worker) on VMBACKUP_LISTEN."""
    from vmbackup.api import serving

    settings = _settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        serving.ensure_open_files(settings.max_connections)
    except OSError as exc:
        click.echo(f"vmbackup: {exc}", err=True)
        sys.exit(2)
    # The port first: a second serve on a busy port must stop before it migrates, recovers or runs transactions.
    try:
        sock = serving.listen_socket(settings.host, settings.port)
    except OSError as exc:
        click.echo(f"vmbackup: cannot listen on {settings.listen}: {exc.strerror or exc}", err=True)
        sys.exit(1)
    from vmbackup.api.app import create_app

    if settings.api_processes == 1:
        app = create_app(settings)
        click.echo(f"vmbackup: listening on http://{settings.listen} (data in {settings.data_dir.resolve()})")
        serving.serve(app, settings, sock)
        return
    # Several processes: migrate and seed here, once (no worker built: nothing with threads or connections before
    # the fork), then each process builds its own app. One worker and one scheduler per service: the first's.
    create_app(settings.model_copy(update={"worker": "external"})).state.engine.dispose()
    click.echo(
        f"vmbackup: listening on http://{settings.listen} with {settings.api_processes} processes "
        f"(data in {settings.data_dir.resolve()})"
    )

    def build(i: int) -> Any:
        if i == 0:
            return create_app(settings)
        other = create_app(settings.model_copy(update={"worker": "external"}))
        other.state.scheduler = None
        return other

    sys.exit(serving.serve_processes(build, settings, sock, settings.api_processes))


@cli.command()
def migrate() -> None:
    """Bring the database schema up to date and exit."""
    from vmbackup.db.migrate import upgrade
    from vmbackup.db.session import make_engine

    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(make_engine(settings.database_url))
    click.echo("vmbackup: database is up to date")


@cli.command()
@click.option(
    "--hypervisor",
    "hypervisor_ids",
    type=int,
    multiple=True,
    metavar="ID",
    help="Run only the takes and restores of VMs on this hypervisor (repeatable).",
)
@click.option(
    "--backup-server",
    "backup_server_ids",
    type=int,
    multiple=True,
    metavar="ID",
    help="Run only the work on this backup server's stored data: delete, convert, integrity checks (repeatable).",
)
def worker(hypervisor_ids: tuple[int, ...], backup_server_ids: tuple[int, ...]) -> None:
    """Run transactions queued by `vmbackup serve` processes started with VMBACKUP_WORKER=external.

    On SQLite it polls the transactions table; on PostgreSQL it is a procrastinate worker (jobs deferred by the API,
    one at a time per VM or backup, stalled workers' transactions failed by the periodic maintenance task). With
    neither option it runs every transaction; with some, only those of its hypervisors and backup servers."""
    import signal
    import threading

    from vmbackup.db.migrate import upgrade
    from vmbackup.db.session import make_engine, make_session_factory
    from vmbackup.services import fleet, machines, routing, tasks

    settings = _settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # as `migrate` does: a first start on its own host
    engine = make_engine(settings.database_url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    with sessions() as db:
        fleet.check_ids(db, hypervisor_ids, backup_server_ids)  # NotFound: exit code 3, before any work
    serving = fleet.serving(routing.queues_of(list(hypervisor_ids), list(backup_server_ids)))
    dedicated = bool(hypervisor_ids or backup_server_ids)
    machines.bind_image_roots(sessions, settings.image_roots)  # tasks re-check image paths with it
    tasks.bind_scratch_dir(sessions, settings.data_dir.resolve() / "scratch")
    if settings.is_postgres:
        import asyncio

        from vmbackup.jobs.procrastinate_queue import ProcrastinateRunner
        from vmbackup.jobs.scheduler import make_scheduler

        pq_runner = ProcrastinateRunner(
            settings.database_url,
            engine,
            sessions,
            concurrency=settings.worker_concurrency,
            scheduler=make_scheduler(settings, sessions, None, list(backup_server_ids) if dedicated else None),
            hypervisor_ids=hypervisor_ids,
            backup_server_ids=backup_server_ids,
        )
        pq_runner.recover()
        click.echo(
            f"vmbackup: procrastinate worker {pq_runner.me} serving {serving}, "
            f"running {settings.worker_concurrency} at a time"
        )
        # Restarted after database errors; SIGINT/SIGTERM stop it after the transactions it runs.
        asyncio.run(pq_runner.run_forever())
        click.echo("vmbackup: worker stopped")
        engine.dispose()
        return

    from vmbackup.jobs.worker import Worker

    runner = Worker(
        sessions,
        concurrency=settings.worker_concurrency,
        poll_seconds=0.5,
        hypervisor_ids=hypervisor_ids,
        backup_server_ids=backup_server_ids,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    runner.start()
    click.echo(f"vmbackup: worker {runner.me} serving {serving}, running {settings.worker_concurrency} at a time")
    stop.wait()
    click.echo("vmbackup: worker stopping after the transactions it runs")
    runner.stop()


cli.add_command(store)
cli.add_command(backups)


def _database_problem(exc: BaseException) -> str | None:
    """One line for an error of the database or its schema (unreachable, corrupt, from a newer version), else None.

    Looked up in sys.modules rather than imported: `vmbackup store ...` never loads SQLAlchemy or Alembic, and
    an error of theirs can only come from a command that did."""
    classes = tuple(
        getattr(sys.modules[module], name)
        for module, name in (("sqlalchemy.exc", "SQLAlchemyError"), ("alembic.util.exc", "CommandError"))
        if module in sys.modules
    )
    if not classes or not isinstance(exc, classes):
        return None
    cause = getattr(exc, "orig", None) or exc  # the driver's own message, without SQLAlchemy's statement dump
    line = next((part for part in str(cause).splitlines() if part.strip()), type(cause).__name__)
    return f"the database cannot be used: {line.strip()}"


def main() -> None:
    try:
        cli(standalone_mode=True)
    except VmbackupError as exc:
        click.echo(f"vmbackup: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:
        problem = _database_problem(exc)
        if problem is None:
            raise
        click.echo(f"vmbackup: {problem}", err=True)
        sys.exit(DatabaseUnavailable.exit_code)


if __name__ == "__main__":
    main()
