"""Verify finds damage without changing anything; restore refuses the same damage."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ImageFactory, flip_byte

from vmbackup.engine import Engine
from vmbackup.engine.archive import archive_key, meta_key
from vmbackup.engine.chunkstore import PREFIX
from vmbackup.engine.manifest import manifest_key
from vmbackup.errors import BackupDamaged
from vmbackup.storage import Storage


def _snapshot(storage: Storage) -> dict[str, bytes]:
    return {k: storage.get(k) for k in storage.list()}


def test_verify_of_intact_backups_is_ok(storage: Storage, make_image: ImageFactory) -> None:
    eng = Engine(storage, chunk_size=64 * 1024)
    eng.take_normal("n1", str(make_image()))
    eng.take_incremental("i1", {"vda": str(make_image())})
    for bid in ("n1", "i1"):
        report = eng.verify(bid)
        assert report.ok and report.problems == [] and report.bytes_checked > 0


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9, -5])
def test_flipped_byte_in_archive_is_caught_by_verify_and_restore(
    storage: Storage, make_image: ImageFactory, tmp_path: Path, where: float
) -> None:
    eng = Engine(storage)
    eng.take_normal("n1", str(make_image()))
    key = archive_key("n1")
    data = storage.get(key)
    storage.put(key, flip_byte(data, int(len(data) * where) if where > 0 else len(data) + int(where)))
    before = _snapshot(storage)
    report = eng.verify("n1")
    assert not report.ok and "backup n1: archive normal/n1.tar.zst" in report.problems[0]
    assert _snapshot(storage) == before
    with pytest.raises(BackupDamaged, match="backup n1"):
        eng.restore("n1", str(tmp_path / "out.img"))
    assert not (tmp_path / "out.img").exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_truncated_archive_and_damaged_meta_are_reported(storage: Storage, make_image: ImageFactory) -> None:
    eng = Engine(storage)
    eng.take_normal("n1", str(make_image()))
    data = storage.get(archive_key("n1"))
    storage.put(archive_key("n1"), data[: len(data) // 2])
    assert not eng.verify("n1").ok
    storage.put(meta_key("n1"), b"{not json")
    report = eng.verify("n1")
    assert not report.ok and "metadata" in report.problems[0]


def _a_chunk(storage: Storage) -> str:
    return sorted(storage.list(PREFIX))[0]


def test_flipped_byte_in_chunk_is_caught_and_named(storage: Storage, make_image: ImageFactory, tmp_path: Path) -> None:
    eng = Engine(storage, chunk_size=64 * 1024)
    eng.take_incremental("i1", {"vda": str(make_image())})
    key = _a_chunk(storage)
    storage.put(key, flip_byte(storage.get(key), 20))
    cid = key.rpartition("/")[2]
    report = eng.verify("i1")
    assert not report.ok
    assert report.problems == [
        f"backup i1: chunk {cid} of disk vda is corrupt: " + report.problems[0].split("is corrupt: ")[1]
    ]
    with pytest.raises(BackupDamaged, match=f"backup i1: chunk {cid} of disk vda is corrupt"):
        eng.restore("i1", {"vda": str(tmp_path / "out.img")})
    assert not (tmp_path / "out.img").exists()


def test_missing_chunk_is_caught_before_in_place_restore_starts(storage: Storage, make_image: ImageFactory) -> None:
    img = make_image()
    eng = Engine(storage, chunk_size=64 * 1024)
    eng.take_incremental("i1", {"vda": str(img)})
    key = _a_chunk(storage)
    storage.delete(key)
    cid = key.rpartition("/")[2]
    assert eng.verify("i1").problems == [f"backup i1: chunk {cid} of disk vda is missing"]
    before = img.read_bytes()
    with pytest.raises(BackupDamaged, match=f"chunk {cid} of disk vda is missing"):
        eng.restore("i1", {"vda": str(img)})
    assert img.read_bytes() == before  # refused before writing anything


def test_damaged_manifest_is_reported(storage: Storage, make_image: ImageFactory, tmp_path: Path) -> None:
    eng = Engine(storage, chunk_size=64 * 1024)
    eng.take_incremental("i1", {"vda": str(make_image())})
    raw = storage.get(manifest_key("i1"))
    storage.put(manifest_key("i1"), raw[:-40])
    report = eng.verify("i1")
    assert not report.ok and "manifest manifests/i1.json is damaged" in report.problems[0]
    with pytest.raises(BackupDamaged, match="backup i1: manifest"):
        eng.restore("i1", {"vda": str(tmp_path / "o")})


def test_quarantined_damage_is_healed_by_the_next_take(storage: Storage, make_image: ImageFactory) -> None:
    eng = Engine(storage, chunk_size=64 * 1024)
    image = str(make_image())
    eng.take_incremental("i1", {"vda": image})
    victim = max((k for k in storage.list(PREFIX)), key=storage.size)
    storage.put(victim, flip_byte(storage.get(victim), storage.size(victim) // 2))
    report = eng.verify("i1")
    assert not report.ok and report.damaged_chunks == [victim.rpartition("/")[2]]
    assert eng.quarantine(report.damaged_chunks) == 1
    assert not storage.exists(victim) and storage.exists(f"quarantine/{victim.rpartition('/')[2]}")
    stats = eng.take_incremental("i2", {"vda": image})
    assert stats.new_bytes_stored > 0  # the damaged chunk was stored afresh
    assert eng.verify("i1").ok and eng.verify("i2").ok


def test_quarantine_waits_while_a_take_holds_the_store(storage: Storage, make_image: ImageFactory) -> None:
    eng = Engine(storage, chunk_size=64 * 1024)
    eng.take_incremental("i1", {"vda": str(make_image())})
    victim = next(iter(storage.list(PREFIX)))
    storage.put(victim, flip_byte(storage.get(victim), 10))
    damaged = eng.verify("i1").damaged_chunks
    with storage.lock(exclusive=False):  # what a running take holds
        assert eng.quarantine(damaged) == 0
    assert eng.quarantine(damaged) == 1
