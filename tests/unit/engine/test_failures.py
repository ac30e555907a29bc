"""Failure modes: missing source, full storage, bad targets, existing ids."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ImageFactory

from vmbackup.engine import Engine
from vmbackup.errors import BackupExists, BackupMissing, SourceMissing, StorageFull, TargetInvalid
from vmbackup.storage import LocalStorage, MemoryStorage, Storage


def test_missing_source_image(storage: Storage, tmp_path: Path) -> None:
    eng = Engine(storage)
    missing = tmp_path / "nope.img"
    with pytest.raises(SourceMissing, match=f"disk image {missing} does not exist"):
        eng.take_normal("n1", str(missing))
    with pytest.raises(SourceMissing, match="does not exist"):
        eng.take_incremental("i1", {"vda": str(missing)})
    assert list(storage.list()) == []


def test_unknown_backup_is_missing(storage: Storage, tmp_path: Path) -> None:
    eng = Engine(storage)
    for call in (
        lambda: eng.kind_of("zz"),
        lambda: eng.verify("zz"),
        lambda: eng.delete("zz"),
        lambda: eng.restore("zz", str(tmp_path / "o")),
    ):
        with pytest.raises(BackupMissing, match="backup zz does not exist"):
            call()


def test_taking_an_existing_id_is_refused(storage: Storage, make_image: ImageFactory) -> None:
    eng = Engine(storage)
    eng.take_normal("n1", str(make_image()))
    with pytest.raises(BackupExists):
        eng.take_incremental("n1", {"vda": str(make_image())})


@pytest.mark.parametrize("kind", ["normal", "incremental"])
def test_full_storage_fails_and_keeps_older_backups(make_image: ImageFactory, tmp_path: Path, kind: str) -> None:
    storage = MemoryStorage()
    eng = Engine(storage, chunk_size=64 * 1024)
    eng.take_normal("old1", str(make_image()))
    eng.take_incremental("old2", {"vda": str(make_image())})
    before = dict(storage.objects)
    storage.capacity = sum(map(len, before.values())) + 50_000  # room for a little, not a new backup
    other = make_image("other.img", seed=9)
    with pytest.raises(StorageFull, match="storage full"):
        if kind == "normal":
            eng.take_normal("new", str(other))
        else:
            eng.take_incremental("new", {"vda": str(other)})
    assert storage.open_writers == 0
    assert {k: v for k, v in storage.objects.items() if k in before} == before
    assert [b.backup_id for b in eng.list()] == ["old1", "old2"]
    assert eng.verify("old1").ok and eng.verify("old2").ok


def test_enospc_on_local_storage_leaves_no_temp_file(
    make_image: ImageFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    store = LocalStorage(tmp_path / "store")
    eng = Engine(store)
    eng.take_normal("old", str(make_image()))
    real_fsync = os.fsync

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("vmbackup.storage.local.os.fsync", full)
    with pytest.raises(StorageFull):
        eng.take_normal("new", str(make_image("b.img", seed=4)))
    monkeypatch.setattr("vmbackup.storage.local.os.fsync", real_fsync)
    assert [p.name for p in (tmp_path / "store").rglob(".tmp-*")] == []
    assert [b.backup_id for b in eng.list()] == ["old"]


def test_restore_target_refusals(storage: Storage, make_image: ImageFactory, tmp_path: Path) -> None:
    eng = Engine(storage, chunk_size=64 * 1024)
    eng.take_normal("n1", str(make_image()))
    eng.take_incremental("i1", {"vda": str(make_image())})
    with pytest.raises(TargetInvalid, match="does not exist"):
        eng.restore("n1", str(tmp_path / "no" / "dir" / "x.img"))
    with pytest.raises(TargetInvalid, match="neither"):
        eng.restore("n1", str(tmp_path))
    with pytest.raises(TargetInvalid, match="no disk vdz"):
        eng.restore("i1", {"vdz": str(tmp_path / "x")})
