"""Delete and garbage collection: shared chunks survive, a racing take never loses a chunk."""

from __future__ import annotations

import threading
from pathlib import Path

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
        started = threading.Event()

        def slow_progress(done: int, total: int, started: threading.Event = started) -> None:
            started.set()

        errors: list[BaseException] = []

        def take(bid: str = f"new{round_}", errors: list[BaseException] = errors) -> None:
            try:
                eng.take_incremental(bid, {"vda": str(img)}, progress=slow_progress)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        t = threading.Thread(target=take)
        t.start()
        started.wait(5)
        eng.delete(f"old{round_}")  # every chunk of old is also used by new
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
