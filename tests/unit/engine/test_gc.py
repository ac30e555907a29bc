"""Delete and garbage collection: shared chunks survive, a racing take never loses a chunk."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from conftest import ImageFactory, overwrite

from vmbackup.engine import Engine
from vmbackup.engine.chunkstore import PREFIX
from vmbackup.engine.gc import PENDING_KEY
from vmbackup.storage import Storage


def test_delete_normal_removes_archive_and_meta(storage: Storage, make_image: ImageFactory) -> None:
    eng = Engine(storage)
    stats = eng.take_normal("n1", str(make_image()))
    assert eng.delete("n1") == stats.new_bytes_stored
    assert list(storage.list()) == [] and eng.list() == []


def test_delete_keeps_chunks_shared_with_another_backup(
    storage: Storage, make_image: ImageFactory, tmp_path: Path
) -> None:
    img = make_image()
    eng = Engine(storage, chunk_size=64 * 1024)
    eng.take_incremental("i1", {"vda": str(img)})
    overwrite(img, 10, b"changed")
    eng.take_incremental("i2", {"vda": str(img)})
    freed = eng.delete("i1")
    assert 0 < freed < 70_000  # the manifest and the one chunk only i1 used
    assert eng.verify("i2").ok
    eng.restore("i2", {"vda": str(tmp_path / "r")})
    assert (tmp_path / "r").read_bytes() == img.read_bytes()
    eng.delete("i2")
    assert list(storage.list(PREFIX)) == []


def test_delete_racing_a_take_that_shares_chunks_loses_no_chunk(
    storage: Storage, make_image: ImageFactory, tmp_path: Path
) -> None:
    img = make_image()
    eng = Engine(storage, chunk_size=16 * 1024, workers=2)
    for round_ in range(6):
        eng.take_incremental(f"old{round_}", {"vda": str(img)})
        started, deleted = threading.Event(), threading.Event()

        def slow_progress(
            done: int, total: int, started: threading.Event = started, deleted: threading.Event = deleted
        ) -> None:
            # Hold the take mid-way until the delete has run, so the two really overlap.
            started.set()
            deleted.wait(30)

        errors: list[BaseException] = []

        def take(bid: str = f"new{round_}", errors: list[BaseException] = errors) -> None:
            try:
                eng.take_incremental(bid, {"vda": str(img)}, progress=slow_progress)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        t = threading.Thread(target=take)
        t.start()
        assert started.wait(30), "the take never started"
        eng.delete(f"old{round_}")  # every chunk of old is also used by new
        assert t.is_alive() and storage.exists(PENDING_KEY)  # collection deferred: the take holds the store
        deleted.set()
        t.join()
        assert errors == []
        assert eng.verify(f"new{round_}").ok
    eng.gc()
    assert not storage.exists(PENDING_KEY)
    out = tmp_path / "out"
    eng.restore("new5", {"vda": str(out)})
    assert out.read_bytes() == img.read_bytes()


def test_collection_blocked_by_a_running_take_is_deferred_then_done(storage: Storage, make_image: ImageFactory) -> None:
    img = make_image()
    eng = Engine(storage, chunk_size=64 * 1024)
    eng.take_incremental("i1", {"vda": str(img)})
    with storage.lock(exclusive=False):  # stands in for a running take
        freed = eng.delete("i1")
        assert storage.exists(PENDING_KEY)
        assert list(storage.list(PREFIX)) != []
    assert freed < 70_000
    overwrite(img, 0, b"x" * 100)
    eng.take_incremental("i2", {"vda": str(img)})  # runs the deferred collection when it ends
    assert not storage.exists(PENDING_KEY)
    assert eng.verify("i2").ok
    eng.delete("i2")
    assert list(storage.list(PREFIX)) == []


def test_recover_removes_temporaries_orphans_and_unreferenced_chunks(tmp_path: Path, make_image: ImageFactory) -> None:
    from vmbackup.storage import LocalStorage

    store = LocalStorage(tmp_path / "store")
    eng = Engine(store, chunk_size=64 * 1024)
    eng.take_incremental("keep", {"vda": str(make_image())})
    eng.take_normal("n1", str(make_image("b.img", seed=3)))
    store.delete("normal/n1.meta.json")  # take died between archive and meta
    store.put("chunks/ff/" + "f" * 64, b"orphan from a crashed take")
    (tmp_path / "store" / "chunks" / ".tmp-x-123").write_bytes(b"partial")
    eng.recover()
    assert not list(store.list("normal/"))
    assert not store.exists("chunks/ff/" + "f" * 64)
    assert not (tmp_path / "store" / "chunks" / ".tmp-x-123").exists()
    assert eng.verify("keep").ok


# -- what collection must keep, and when it must keep everything ----------------------------------------------


def _referenced_by_the_json(storage: Storage) -> set[str]:
    """Chunk ids the manifests list, read straight from their JSON (not through the engine's decoder)."""
    import json

    out: set[str] = set()
    for key in storage.list("manifests/"):
        for disk in json.loads(storage.get(key))["disks"].values():
            out |= {cid for cid in disk["chunks"] if cid}
    return out


def _chunk_ids(storage: Storage) -> set[str]:
    return {k.rpartition("/")[2] for k in storage.list(PREFIX)}


def test_gc_after_a_delete_keeps_every_chunk_of_the_remaining_backups(storage: Storage, tmp_path: Path) -> None:
    """Disks whose size is not a multiple of the chunk size (a short last chunk), disks that are, and a last
    chunk no other backup shares: after deleting one backup every chunk the others list is still there, they
    restore byte for byte, and nothing unreferenced is left."""
    import os

    cs = 16 * 1024
    sizes = {"vda": 5 * cs + 123, "vdb": 3 * cs, "vdc": cs - 1}
    images: dict[str, dict[str, bytes]] = {}
    eng = Engine(storage, chunk_size=cs, workers=2)
    for n in range(3):
        disks = {}
        for key, size in sizes.items():
            data = os.urandom(size)  # every chunk (the last ones too) unique to this backup and disk
            (tmp_path / f"{n}-{key}.img").write_bytes(data)
            disks[key] = str(tmp_path / f"{n}-{key}.img")
            images.setdefault(f"b{n}", {})[key] = data
        eng.take_incremental(f"b{n}", disks)
    eng.delete("b1")
    eng.gc()
    assert _chunk_ids(storage) == _referenced_by_the_json(storage)
    for bid in ("b0", "b2"):
        assert eng.verify(bid).ok
        out = {key: str(tmp_path / f"{bid}-{key}.out") for key in sizes}
        eng.restore(bid, out)
        assert {k: Path(p).read_bytes() for k, p in out.items()} == images[bid]


def _shared_backups(storage: Storage, make_image: ImageFactory) -> Engine:
    img = make_image()
    eng = Engine(storage, chunk_size=64 * 1024)
    eng.take_incremental("i1", {"vda": str(img)})
    overwrite(img, 0, b"i2 differs here" * 100)
    eng.take_incremental("i2", {"vda": str(img)})
    return eng


def _unreadable(storage: Storage, key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    real = type(storage).get

    def get(self: Storage, k: str, *args: object) -> bytes:
        if k == key:
            raise OSError(errno.EIO, "Input/output error")
        return real(self, k, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(type(storage), "get", get)


@pytest.mark.parametrize("damage", ["truncated", "not-json", "deeply-nested", "edited-id", "unreadable"])
def test_gc_with_one_damaged_manifest_deletes_nothing_and_says_why(
    storage: Storage,
    make_image: ImageFactory,
    damage: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from vmbackup.engine.manifest import manifest_key

    eng = _shared_backups(storage, make_image)
    storage.put(f"{PREFIX}ee/{'e' * 64}", b"left by a crashed take: unreferenced")
    key = manifest_key("i2")
    good = storage.get(key)
    if damage == "truncated":
        storage.put(key, good[: len(good) // 2])
    elif damage == "not-json":
        storage.put(key, b"\xff" + good)
    elif damage == "deeply-nested":
        storage.put(key, b"[" * 100_000 + b"]" * 100_000)
    elif damage == "edited-id":
        text = good.decode()
        first = text.index('"', text.index('"chunks"') + 10) + 1
        storage.put(key, (text[:first] + "0" + text[first + 1 :]).encode())
    else:
        _unreadable(storage, key, monkeypatch)
    before = _chunk_ids(storage)
    eng.delete("i1")  # its own chunks become unreferenced, but i2 cannot be read: nothing may go
    assert eng.gc() == 0
    assert _chunk_ids(storage) == before
    why = storage.get(PENDING_KEY).decode()
    assert "nothing deleted" in why and "manifests/i2.json" in why, why
    assert any("manifests/i2.json" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")

    monkeypatch.undo()
    storage.put(key, good)  # repaired: the next collection does its work
    assert eng.gc() > 0
    assert not storage.exists(PENDING_KEY)
    assert _chunk_ids(storage) == _referenced_by_the_json(storage)
    assert eng.verify("i2").ok


@pytest.mark.parametrize("name", [b"\xff\xfe.json", b"new\nline.json", b"a b.json"])
def test_a_stray_file_in_manifests_blocks_gc_without_breaking_it(
    tmp_path: Path, make_image: ImageFactory, name: bytes
) -> None:
    """A file no backup wrote, with a name that is no storage key (not UTF-8, a newline, a space): collection
    deletes nothing, and its reason is still a printable line."""
    import os

    from vmbackup.storage import LocalStorage

    store = LocalStorage(tmp_path / "store")
    eng = _shared_backups(store, make_image)
    with open(os.path.join(os.fsencode(tmp_path / "store" / "manifests"), name), "wb") as f:
        f.write(b"{}")
    before = _chunk_ids(store)
    eng.delete("i1")
    assert eng.gc() == 0 and _chunk_ids(store) == before
    why = store.get(PENDING_KEY).decode()
    assert why.count("\n") == 1 and "nothing deleted" in why, why
    assert [b.backup_id for b in eng.list()] == ["i2"]


def test_recover_leaves_files_it_did_not_write_alone(tmp_path: Path, make_image: ImageFactory) -> None:
    from vmbackup.storage import LocalStorage

    store = LocalStorage(tmp_path / "store")
    eng = Engine(store, chunk_size=64 * 1024)
    eng.take_normal("n1", str(make_image()))
    (tmp_path / "store" / "normal" / "not a backup.tar.zst").write_bytes(b"someone else's")
    eng.recover()
    assert (tmp_path / "store" / "normal" / "not a backup.tar.zst").exists()
    assert eng.verify("n1").ok
