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


# -- valid but wrong data: every object below decompresses cleanly, so zstd's checksum cannot catch it ----------


def _equal_sized_chunks_backup(storage: Storage, tmp_path: Path) -> tuple[Engine, bytes, str, str]:
    """An incremental of distinct random chunks of one size; returns (engine, image, id X, id Y)."""
    import os

    from vmbackup.engine.manifest import decode

    data = b"".join(os.urandom(64 * 1024) for _ in range(4))
    (tmp_path / "disk.img").write_bytes(data)
    eng = Engine(storage, chunk_size=64 * 1024)
    eng.take_incremental("i1", {"vda": str(tmp_path / "disk.img")})
    ids = [cid for _, cid in decode(storage.get(manifest_key("i1")), "i1").disks["vda"].chunk_ids()]
    assert len(set(ids)) == 4 and all(ids)
    return eng, data, str(ids[1]), str(ids[2])


def test_a_swapped_chunk_is_caught_by_verify(storage: Storage, tmp_path: Path) -> None:
    """Chunk file X replaced by the valid zstd frame of chunk Y (same length): only the BLAKE3 re-hash on read
    can tell."""
    from vmbackup.engine.chunkstore import chunk_key

    eng, _, x, y = _equal_sized_chunks_backup(storage, tmp_path)
    storage.put(chunk_key(x), storage.get(chunk_key(y)))
    report = eng.verify("i1")
    assert report.problems == [f"backup i1: chunk {x} of disk vda is corrupt: fails its BLAKE3 check"]
    assert report.damaged_chunks == [x]


def test_a_swapped_chunk_is_refused_by_restore(storage: Storage, tmp_path: Path) -> None:
    from vmbackup.engine.chunkstore import chunk_key

    eng, data, x, y = _equal_sized_chunks_backup(storage, tmp_path)
    storage.put(chunk_key(x), storage.get(chunk_key(y)))
    with pytest.raises(BackupDamaged, match=f"backup i1: chunk {x} of disk vda is corrupt: fails its BLAKE3 check"):
        eng.restore("i1", {"vda": str(tmp_path / "out.img")})
    assert not (tmp_path / "out.img").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    # In place too (the chunk exists, so the up-front check passes; the re-hash stops it before it is written).
    target = tmp_path / "disk.img"
    with pytest.raises(BackupDamaged, match=f"chunk {x} of disk vda is corrupt"):
        eng.restore("i1", {"vda": str(target)})
    with open(target, "rb") as f:
        f.seek(64 * 1024)
        assert f.read(64 * 1024) != data[128 * 1024 : 192 * 1024]  # Y's bytes never landed where X belongs


def _two_normal_backups(storage: Storage, make_image: ImageFactory) -> tuple[Engine, Path, Path]:
    eng = Engine(storage)
    a, b = make_image("a.img", seed=1), make_image("b.img", seed=2)
    eng.take_normal("n1", str(a))
    eng.take_normal("n2", str(b))
    return eng, a, b


def _swap(storage: Storage, *keys: tuple[str, str]) -> None:
    saved = {k: storage.get(k) for pair in keys for k in pair}
    for k1, k2 in keys:
        storage.put(k1, saved[k2])
        storage.put(k2, saved[k1])


@pytest.mark.parametrize("what", ["archives", "archives-and-metas"])
def test_swapped_normal_backups_are_caught_by_verify_and_restore(
    storage: Storage, make_image: ImageFactory, tmp_path: Path, what: str
) -> None:
    eng, _, _ = _two_normal_backups(storage, make_image)
    pairs = [(archive_key("n1"), archive_key("n2"))]
    if what == "archives-and-metas":
        pairs.append((meta_key("n1"), meta_key("n2")))
    _swap(storage, *pairs)
    for bid in ("n1", "n2"):
        report = eng.verify(bid)
        assert not report.ok and report.problems[0].startswith(f"backup {bid}: "), report.problems
        with pytest.raises(BackupDamaged, match=f"backup {bid}: "):
            eng.restore(bid, str(tmp_path / f"{bid}.out"))
        assert not (tmp_path / f"{bid}.out").exists()
    if what == "archives-and-metas":
        assert "it belongs to backup 'n2'" in eng.verify("n1").problems[0]
    assert eng.list() == [] if what == "archives-and-metas" else len(eng.list()) == 2


@pytest.mark.parametrize("version", [3, 2])
def test_a_swapped_meta_relabelled_to_its_new_name_is_still_caught(
    storage: Storage, make_image: ImageFactory, tmp_path: Path, version: int
) -> None:
    """n2's files moved under n1's name and its meta rewritten to say n1 (with a valid checksum): the archive
    still holds n2's member, whose name the tar stream's BLAKE3 covers."""
    import json

    from vmbackup.engine.archive import meta_checksum

    eng, _, _ = _two_normal_backups(storage, make_image)
    _swap(storage, (archive_key("n1"), archive_key("n2")), (meta_key("n1"), meta_key("n2")))
    meta = json.loads(storage.get(meta_key("n1")))
    meta.update(backup_id="n1", member_name="n1.img", version=version)
    meta.pop("blake3")
    if version == 3:
        meta["blake3"] = meta_checksum(meta)
    storage.put(meta_key("n1"), json.dumps(meta).encode())
    report = eng.verify("n1")
    assert "its member is 'n2.img', not 'n1.img'" in report.problems[0], report.problems
    with pytest.raises(BackupDamaged, match="another backup's archive"):
        eng.restore("n1", str(tmp_path / "out.img"))
    assert not (tmp_path / "out.img").exists()


def test_an_edited_version_3_meta_is_damage(storage: Storage, make_image: ImageFactory) -> None:
    import json

    eng = Engine(storage)
    eng.take_normal("n1", str(make_image()))
    meta = json.loads(storage.get(meta_key("n1")))
    meta["created"] = "2020-01-01T00:00:00+00:00"  # parses, adds up, checks nothing else: only the checksum
    storage.put(meta_key("n1"), json.dumps(meta).encode())
    report = eng.verify("n1")
    assert "metadata normal/n1.meta.json is damaged: its content fails its BLAKE3 checksum" in report.problems[0]


@pytest.mark.parametrize("kind", ["normal", "incremental"])
def test_an_unreadable_object_is_damage_not_a_crash(
    storage: Storage, make_image: ImageFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """An I/O error reading an archive or a chunk is reported like damage (and an unreadable chunk is not moved
    aside: it may be a permission problem, not a bad file)."""
    import errno
    from collections.abc import Callable
    from typing import Any

    eng = Engine(storage, chunk_size=64 * 1024)
    if kind == "normal":
        eng.take_normal("b1", str(make_image()))
        victim = archive_key("b1")
    else:
        eng.take_incremental("b1", {"vda": str(make_image())})
        victim = _a_chunk(storage)
    real = type(storage).read_once

    def read_once(self: Storage, key: str, use: Callable[[memoryview], Any], *args: Any) -> Any:
        if key == victim:
            raise OSError(errno.EIO, "Input/output error")
        return real(self, key, use, *args)

    monkeypatch.setattr(type(storage), "read_once", read_once)
    report = eng.verify("b1")
    assert not report.ok and "cannot be read (Input/output error)" in report.problems[0], report.problems
    assert report.damaged_chunks == []
    target = {"vda": str(tmp_path / "out.img")} if kind == "incremental" else str(tmp_path / "out.img")
    with pytest.raises(BackupDamaged, match="cannot be read"):
        eng.restore("b1", target)
    assert not (tmp_path / "out.img").exists()
