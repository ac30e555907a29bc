"""Incremental backups: chunking, dedup against the shared store, round trips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import ImageFactory, MiB, overwrite
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmbackup.engine import Engine
from vmbackup.engine.manifest import manifest_key
from vmbackup.storage import MemoryStorage, Storage


def test_incremental_round_trip_of_several_disks(storage: Storage, make_image: ImageFactory, tmp_path: Path) -> None:
    a, b = make_image("a.img"), make_image("b.img", size=3 * MiB + 777, seed=5)
    eng = Engine(storage, chunk_size=64 * 1024)
    stats = eng.take_incremental("i1", {"vda": str(a), "vdb": str(b)})
    assert stats.logical_bytes == a.stat().st_size + b.stat().st_size
    assert stats.zero_bytes >= 4 * MiB  # (repeated text chunks dedup within the backup: reused > 0)
    eng.restore("i1", {"vda": str(tmp_path / "ra"), "vdb": str(tmp_path / "rb")})
    assert (tmp_path / "ra").read_bytes() == a.read_bytes()
    assert (tmp_path / "rb").read_bytes() == b.read_bytes()
    assert os.stat(tmp_path / "ra").st_blocks * 512 < 2 * MiB


def test_second_backup_stores_only_changed_chunks(storage: Storage, make_image: ImageFactory, tmp_path: Path) -> None:
    img = make_image()
    eng = Engine(storage, chunk_size=64 * 1024)
    first = eng.take_incremental("i1", {"vda": str(img)})
    overwrite(img, 4 * MiB + 200, os.urandom(1000))  # one chunk changes
    second = eng.take_incremental("i2", {"vda": str(img)})
    manifest = storage.size(manifest_key("i2"))
    assert second.new_bytes_stored - manifest < 66_000 < first.new_bytes_stored
    assert second.reused_bytes > 200_000
    eng.restore("i2", {"vda": str(tmp_path / "r2")})
    assert (tmp_path / "r2").read_bytes() == img.read_bytes()
    eng.delete("i2")
    eng.restore("i1", str(tmp_path / "r1"))  # each incremental restores on its own
    assert (tmp_path / "r1").read_bytes() != img.read_bytes()


def test_restore_skips_disks_not_asked_for(storage: Storage, make_image: ImageFactory, tmp_path: Path) -> None:
    eng = Engine(storage, chunk_size=64 * 1024)
    eng.take_incremental("i1", {"vda": str(make_image("a.img")), "vdb": str(make_image("b.img", seed=2))})
    eng.restore("i1", {"vdb": str(tmp_path / "only_b")})
    assert (tmp_path / "only_b").read_bytes() == (tmp_path / "b.img").read_bytes()
    assert not (tmp_path / "only_a").exists()


def test_in_place_restore_rewrites_zero_chunks(storage: Storage, make_image: ImageFactory) -> None:
    from vmbackup.engine.chunkstore import ChunkStore
    from vmbackup.engine.manifest import decode
    from vmbackup.engine.restore import restore_incremental

    img = make_image()
    original = img.read_bytes()
    eng = Engine(storage, chunk_size=64 * 1024)
    eng.take_incremental("i1", {"vda": str(img)})
    overwrite(img, MiB + 5, b"stale data" * 5000)  # was zeros
    overwrite(img, 10, b"stale")
    eng.restore("i1", {"vda": str(img)})
    assert img.read_bytes() == original
    overwrite(img, MiB + 5, b"stale data" * 5000)
    manifest = decode(storage.get(manifest_key("i1")), "i1")
    restore_incremental(ChunkStore(storage), manifest, {"vda": str(img)}, None, 2, force_overwrite=True)
    assert img.read_bytes() == original


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    size=st.integers(0, 300_000),
    chunk=st.sampled_from([4096, 16384, 65536]),
    writes=st.lists(st.tuples(st.integers(0, 299_999), st.binary(min_size=1, max_size=5000)), max_size=6),
)
def test_chunker_round_trip_property(tmp_path: Path, size: int, chunk: int, writes: list[tuple[int, bytes]]) -> None:
    img = tmp_path / "prop.img"
    with open(img, "wb") as f:
        f.truncate(size)
        for off, data in writes:
            if off < size:
                f.seek(off)
                f.write(data[: size - off])
    eng = Engine(MemoryStorage(), chunk_size=chunk, workers=2)
    eng.take_incremental("p", {"d": str(img)})
    out = tmp_path / "prop.out"
    out.unlink(missing_ok=True)
    eng.restore("p", {"d": str(out)})
    assert out.read_bytes() == img.read_bytes()


def test_backups_with_other_chunk_sizes_still_restore_and_share_nothing_wrongly(
    storage: Storage, make_image: ImageFactory, tmp_path: Path
) -> None:
    """The chunk size is per disk in each manifest: backups taken with the old 1 MiB default restore with an
    engine whose default is smaller, and both kinds live side by side in one store."""
    from vmbackup.engine.chunker import CHUNK_SIZE
    from vmbackup.engine.manifest import decode

    img = make_image(size=6 * MiB + 4096 + 17)
    Engine(storage, chunk_size=MiB).take_incremental("old", {"vda": str(img)})
    assert decode(storage.get(manifest_key("old")), "old").disks["vda"].chunk_size == MiB
    overwrite(img, 3 * MiB + 1, b"new data")
    eng = Engine(storage)
    eng.take_incremental("new", {"vda": str(img)})
    assert decode(storage.get(manifest_key("new")), "new").disks["vda"].chunk_size == CHUNK_SIZE < MiB
    assert eng.verify("old").ok and eng.verify("new").ok
    eng.restore("new", {"vda": str(tmp_path / "new.img")})
    assert (tmp_path / "new.img").read_bytes() == img.read_bytes()
    eng.delete("new")
    eng.restore("old", {"vda": str(tmp_path / "old.img")})
    assert (tmp_path / "old.img").read_bytes() != img.read_bytes()
    assert eng.verify("old").ok


def test_failed_take_writes_no_manifest_and_leaves_no_temporary(
    make_image: ImageFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A take that dies after some chunk batches were flushed leaves chunks (garbage for recover), never a
    manifest, and no temporary file."""
    import errno

    from vmbackup.engine import chunkstore
    from vmbackup.errors import StorageFull
    from vmbackup.storage import LocalStorage

    monkeypatch.setattr(chunkstore, "FLUSH_EVERY", 4)
    store = LocalStorage(tmp_path / "store")
    eng = Engine(store, chunk_size=16 * 1024)
    real_fsync, calls = os.fsync, [0]

    def fsync(fd: int) -> None:
        calls[0] += 1
        if calls[0] > 10:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr("vmbackup.storage.local.os.fsync", fsync)
    with pytest.raises(StorageFull):
        eng.take_incremental("i1", {"vda": str(make_image())})
    monkeypatch.setattr("vmbackup.storage.local.os.fsync", real_fsync)
    assert list(store.list("manifests/")) == [] and eng.list() == []
    assert list(store.list("chunks/")) != []  # flushed batches: garbage until recovered
    assert [p.name for p in (tmp_path / "store").rglob(".tmp-*")] == []
    eng.recover()
    assert list(store.list("chunks/")) == []


def test_restore_to_a_new_path_with_a_missing_chunk_leaves_nothing(
    storage: Storage, make_image: ImageFactory, tmp_path: Path
) -> None:
    from vmbackup.engine.chunkstore import PREFIX
    from vmbackup.errors import BackupDamaged

    eng = Engine(storage, chunk_size=64 * 1024)
    eng.take_incremental("i1", {"vda": str(make_image())})
    storage.delete(sorted(storage.list(PREFIX))[-1])
    with pytest.raises(BackupDamaged, match="is missing"):
        eng.restore("i1", {"vda": str(tmp_path / "out.img")})
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith((".out", "out"))] == []
