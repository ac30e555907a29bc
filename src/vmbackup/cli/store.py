"""`vmbackup store ...`: the engine on a storage directory, with no database and no server.

vmbackup store --help                      (mounted by cli/main.py)
python -m vmbackup.cli.store --help        (standalone)
"""

from __future__ import annotations

import json
import os
import secrets
import string
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from vmbackup.engine import Engine, Progress
from vmbackup.errors import BackupDamaged, VmbackupError
from vmbackup.storage import LocalStorage

_ALPHABET = string.ascii_lowercase + string.digits


def new_backup_id() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(14))


class _Group(click.Group):
    """Domain errors become one line on stderr and their exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VmbackupError as exc:
            click.echo(f"error: {exc.message}", err=True)
            ctx.exit(exc.exit_code)


def _dir_option(*, create: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--dir. Only ``take`` (``create``) makes a missing store directory: for the others a missing one is a typo,
    and creating it would hide that behind an empty listing or a "no such backup"."""
    return click.option(
        "--dir",
        "store_dir",
        envvar="VMBACKUP_STORE_DIR",
        required=True,
        type=click.Path(file_okay=False, exists=not create),
        help="Storage directory [env VMBACKUP_STORE_DIR]" + (", created if missing" if create else ", must exist"),
    )


def _json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary")(f)


def _disks(values: tuple[str, ...], *, distinct_paths: bool = False) -> dict[str, str]:
    """KEY=PATH pairs. A key given twice is refused (one would silently replace the other), and with
    ``distinct_paths`` (restore) so is a path given twice: two disks restored into one file would leave a mix."""
    out: dict[str, str] = {}
    for v in values:
        key, sep, path = v.partition("=")
        if not sep or not key or not path:
            raise click.BadParameter(f"expected KEY=PATH, got {v!r}", param_hint="--disk")
        if key in out:
            raise click.BadParameter(f"disk {key!r} is given more than once", param_hint="--disk")
        if distinct_paths and os.path.realpath(path) in {os.path.realpath(p) for p in out.values()}:
            raise click.BadParameter(f"{path!r} is the target of more than one disk", param_hint="--disk")
        out[key] = path
    return out


@contextmanager
def _progress(label: str) -> Iterator[Progress | None]:
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(desc=label, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr) as bar:

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield update


def _emit(as_json: bool, summary: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(summary, default=str) if as_json else text)


@click.group(cls=_Group)
def store() -> None:
    """Take, list, restore, verify and delete backups in a storage directory."""


@store.command()
@click.argument("image", required=False)
@click.option("--incremental", is_flag=True, help="Incremental (chunked) backup instead of a .tar.zst archive")
@click.option("--id", "backup_id", help="Backup id (default: 14 random letters/digits)")
@click.option("--disk", "disks", multiple=True, metavar="KEY=PATH", help="A disk of an incremental backup")
@_dir_option(create=True)
@_json_option
def take(
    image: str | None, incremental: bool, backup_id: str | None, disks: tuple[str, ...], store_dir: str, as_json: bool
) -> None:
    """Back up IMAGE (normal), or the --disk images (incremental)."""
    backup_id = backup_id or new_backup_id()
    engine = Engine(LocalStorage(store_dir))
    with _progress("take") as progress:
        if incremental or disks:
            targets = _disks(disks)
            if image:
                if "disk0" in targets:
                    raise click.BadParameter("disk 'disk0' is given as IMAGE and as --disk", param_hint="--disk")
                targets["disk0"] = image
            if not targets:
                raise click.UsageError("give IMAGE or --disk KEY=PATH")
            stats = engine.take_incremental(backup_id, targets, progress)
        else:
            if not image:
                raise click.UsageError("give IMAGE")
            stats = engine.take_normal(backup_id, image, progress)
    kind = "incremental" if incremental or disks else "normal"
    _emit(
        as_json,
        {"backup_id": backup_id, "kind": kind, **stats.to_dict()},
        f"{backup_id} ({kind}): {stats.logical_bytes} bytes, {stats.new_bytes_stored} stored, "
        f"{stats.duration_seconds:.1f}s",
    )


@store.command(name="list")
@_dir_option(create=False)
@_json_option
def list_(store_dir: str, as_json: bool) -> None:
    """List the backups in the store."""
    backups = Engine(LocalStorage(store_dir)).list()
    if as_json:
        click.echo(json.dumps([{**b.__dict__, "created": b.created.isoformat()} for b in backups]))
        return
    for b in backups:
        click.echo(f"{b.backup_id}  {b.kind:<11}  {b.created.isoformat()}  {b.logical_bytes:>14}  {','.join(b.disks)}")


@store.command()
@click.argument("backup_id")
@click.argument("target", required=False)
@click.option("--disk", "disks", multiple=True, metavar="KEY=PATH", help="Where to restore a disk")
@_dir_option(create=False)
@_json_option
def restore(backup_id: str, target: str | None, disks: tuple[str, ...], store_dir: str, as_json: bool) -> None:
    """Restore BACKUP_ID to TARGET, or its disks to the --disk paths."""
    if not target and not disks:
        raise click.UsageError("give TARGET or --disk KEY=PATH")
    with _progress("restore") as progress:
        stats = Engine(LocalStorage(store_dir)).restore(
            backup_id, target or _disks(disks, distinct_paths=True), progress
        )
    _emit(
        as_json,
        {"backup_id": backup_id, **stats.to_dict()},
        f"restored {backup_id}: {stats.logical_bytes} bytes in {stats.duration_seconds:.1f}s",
    )


@store.command()
@click.argument("backup_id")
@_dir_option(create=False)
@_json_option
def verify(backup_id: str, store_dir: str, as_json: bool) -> None:
    """Re-read and check everything BACKUP_ID references.  Exits with BackupDamaged.exit_code when damaged."""
    with _progress("verify") as progress:
        report = Engine(LocalStorage(store_dir)).verify(backup_id, progress)
    _emit(
        as_json,
        report.to_dict(),
        "\n".join(
            [
                f"{backup_id}: {'ok' if report.ok else 'DAMAGED'} ({report.bytes_checked} bytes checked)",
                *report.problems,
            ]
        ),
    )
    if not report.ok:
        sys.exit(BackupDamaged.exit_code)


@store.command()
@click.argument("backup_id")
@_dir_option(create=False)
@_json_option
def delete(backup_id: str, store_dir: str, as_json: bool) -> None:
    """Delete BACKUP_ID and the chunks only it used."""
    freed = Engine(LocalStorage(store_dir)).delete(backup_id)
    _emit(as_json, {"backup_id": backup_id, "bytes_freed": freed}, f"deleted {backup_id}: {freed} bytes freed")


if __name__ == "__main__":
    store()
