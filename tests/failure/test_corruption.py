"""Damaged storage: flipped bytes in archives, chunks and manifests, truncated files, deleted objects, and valid
but wrong data that no zstd checksum catches: a chunk file holding another chunk's frame, a manifest listing
another existing chunk, the archives (and metas) of two backups swapped.

For each case: verify reports the damage, a restore through the API fails with an error naming it and leaves the
disk image untouched (services/tasks.restore_backup verifies before overwriting), and nothing else in storage
changes: every other file keeps its bytes and the other backup still verifies. The damage is then undone and the
backup verifies again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.failure.conftest import MiB, Service, sha
from tests.images import flip_byte, write_image
from vmbackup.engine import Engine
from vmbackup.errors import VmbackupError
from vmbackup.storage.local import LocalStorage


def _flip(at: float) -> Callable[[Path], None]:
    def damage(p: Path) -> None:
        data = p.read_bytes()
        p.write_bytes(flip_byte(data, int(len(data) * at)))

    return damage


def _truncate(p: Path) -> None:
    os.truncate(p, p.stat().st_size // 2)


def _delete(p: Path) -> None:
    p.unlink()


def _files(root: Path) -> dict[Path, str]:
    return {p: sha(p) for p in root.rglob("*") if p.is_file() and p.name != ".lock"}


def _replace_with(source: Path) -> Callable[[Path], None]:
    def damage(p: Path) -> None:
        p.write_bytes(source.read_bytes())

    return damage


def _edit(old: str, new: str) -> Callable[[Path], None]:
    def damage(p: Path) -> None:
        text = p.read_text()
        assert old in text
        p.write_text(text.replace(old, new, 1))

    return damage


def _swap_with(others: dict[Path, Path]) -> Callable[[Path], None]:
    """Exchange each file with its partner (the archive and meta of another backup)."""

    def damage(_: Path) -> None:
        saved = {p: p.read_bytes() for pair in others.items() for p in pair}
        for a, b in others.items():
            a.write_bytes(saved[b])
            b.write_bytes(saved[a])

    return damage


def test_damage_is_reported_and_refused(service: Service, tmp_path: Path) -> None:
    s, api = service, service.api
    user = api.user("alice")
    vm = api.vm(user["id"], api.template()["id"])
    image = write_image(tmp_path / "disk.img", 6 * MiB, seed=7)
    disk = api.disk(vm["id"], api.data_store()["id"], image_path=str(image))
    normal = s.take_normal(disk["id"])
    assert s.done(normal["id"])["status"] == "complete"
    incremental = s.take_incremental(vm["id"])
    assert s.done(incremental["id"])["status"] == "complete"
    with open(image, "r+b") as f:  # a second normal backup of other data, to swap with the first
        f.write(os.urandom(MiB))
    normal2 = s.take_normal(disk["id"])
    assert s.done(normal2["id"])["status"] == "complete"
    n_id, i_id = s.backup(normal["id"])["identifier"], s.backup(incremental["id"])["identifier"]
    n2_id = s.backup(normal2["id"])["identifier"]
    # The disk changes after the backups: a restore that ran would change it back.
    with open(image, "r+b") as f:
        f.write(os.urandom(MiB))
    image_sha, image_mtime = sha(image), image.stat().st_mtime_ns

    root = s.storage
    chunks = sorted(p for p in (root / "chunks").rglob("*") if p.is_file())
    chunk, chunk_id = chunks[0], chunks[0].name
    # Another chunk of the same backup and size (every chunk of this 6 MiB image is 128 KiB).
    other_chunk = next(c for c in chunks[1:] if c.name in (root / f"manifests/{i_id}.json").read_text())
    archive, meta, manifest = (
        root / f"normal/{n_id}.tar.zst",
        root / f"normal/{n_id}.meta.json",
        root / f"manifests/{i_id}.json",
    )
    archive2, meta2 = root / f"normal/{n2_id}.tar.zst", root / f"normal/{n2_id}.meta.json"
    # (name, files the damage touches, damage, backup, what the error must name)
    cases: list[tuple[str, list[Path], Callable[[Path], None], dict[str, Any], str]] = [
        ("archive: byte flipped in the data", [archive], _flip(0.5), normal, f"normal/{n_id}.tar.zst"),
        ("archive: byte flipped in the tar header frame", [archive], _flip(0.0005), normal, f"normal/{n_id}.tar.zst"),
        ("archive: truncated", [archive], _truncate, normal, f"normal/{n_id}.tar.zst"),
        ("archive: deleted", [archive], _delete, normal, f"normal/{n_id}.tar.zst"),
        ("meta: byte flipped", [meta], _flip(0.5), normal, n_id),
        ("meta: truncated", [meta], _truncate, normal, n_id),
        ("chunk: byte flipped", [chunk], _flip(0.5), incremental, chunk_id),
        ("chunk: truncated", [chunk], _truncate, incremental, chunk_id),
        ("chunk: deleted", [chunk], _delete, incremental, chunk_id),
        ("manifest: byte flipped", [manifest], _flip(0.5), incremental, i_id),
        ("manifest: truncated", [manifest], _truncate, incremental, i_id),
        # Valid but wrong: every object still decompresses and parses.
        (
            "chunk: another chunk's valid frame",
            [chunk],
            _replace_with(other_chunk),
            incremental,
            f"chunk {chunk_id} of disk disk-{disk['id']} is corrupt: fails its BLAKE3 check",
        ),
        (
            "manifest: a chunk id edited to another existing chunk's",
            [manifest],
            _edit(chunk_id, other_chunk.name),
            incremental,
            f"manifests/{i_id}.json",
        ),
        ("archive: swapped with another backup's", [archive, archive2], _swap_with({archive: archive2}), normal, n_id),
        (
            "archive and meta: swapped with another backup's",
            [archive, archive2, meta, meta2],
            _swap_with({archive: archive2, meta: meta2}),
            normal,
            n_id,
        ),
    ]
    engine = Engine(LocalStorage(root))
    seen = []
    for name, paths, damage, backup, names in cases:
        originals = {p: p.read_bytes() for p in paths}
        ident = s.backup(backup["id"])["identifier"]
        other = i_id if ident == n_id else n_id
        damage(paths[0])
        before = _files(root)
        try:
            problems = engine.verify(ident).problems
        except VmbackupError as exc:  # damaged beyond reading: verify says so as an error
            problems = [exc.message]
        assert problems, name
        assert any(names in p for p in problems), (name, problems)

        s.restore(backup["id"])
        tx = s.done(backup["id"], "restore_backup")
        assert tx["status"] == "failed", (name, tx["log_output"])
        assert names in tx["log_output"], (name, tx["log_output"])
        assert sha(image) == image_sha and image.stat().st_mtime_ns == image_mtime, f"{name}: the disk was touched"
        assert _files(root) == before, f"{name}: storage changed"
        assert engine.verify(other).ok, name
        assert s.backup(backup["id"])["locked"] is False
        assert api.get(f"/virtual_machines/{vm['id']}.json").json()["virtual_machine"]["locked"] is False

        for p, data in originals.items():
            p.write_bytes(data)
        assert engine.verify(ident).ok, name
        assert engine.verify(n2_id).ok, name
        seen.append((name, problems[0][:100]))
    for name, problem in seen:
        print(f"{name}: {problem}")
    print(f"corruption: {len(seen)} cases reported by verify and refused by restore, disk untouched")
    assert len(seen) == 15
