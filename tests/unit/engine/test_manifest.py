"""Manifests are bound to their backup and checksummed (version 2), and read as untrusted input: a hostile one
is reported damaged by verify, restore, list and GC alike, and never crashes them or restores wrong data."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmbackup.engine import Engine
from vmbackup.engine.chunkstore import PREFIX
from vmbackup.engine.gc import PENDING_KEY
from vmbackup.engine.manifest import VERSION, decode, manifest_key
from vmbackup.errors import BackupDamaged
from vmbackup.storage import MemoryStorage, Storage

CS = 4096


def _image(path: Path, blocks: list[bytes], tail: bytes = b"") -> bytes:
    data = b"".join(blocks) + tail
    path.write_bytes(data)
    return data


def _doc(storage: Storage, backup_id: str) -> dict[str, Any]:
    return dict(json.loads(storage.get(manifest_key(backup_id))))


def _put(storage: Storage, backup_id: str, doc: dict[str, Any]) -> None:
    storage.put(manifest_key(backup_id), json.dumps(doc).encode())


def test_manifest_is_version_2_with_a_checksum_and_decodes(tmp_path: Path) -> None:
    storage = MemoryStorage()
    eng = Engine(storage, chunk_size=CS, workers=2)
    _image(tmp_path / "a.img", [os.urandom(CS), bytes(CS), os.urandom(CS)], os.urandom(100))
    eng.take_incremental("i1", {"vda": str(tmp_path / "a.img")})
    doc = _doc(storage, "i1")
    assert doc["version"] == VERSION == 2 and len(doc["blake3"]) == 64
    m = decode(storage.get(manifest_key("i1")), "i1")
    assert m.checksum() == doc["blake3"] and m.disks["vda"].count == 4


def _two_chunk_backup(tmp_path: Path) -> tuple[MemoryStorage, Engine, bytes, list[str]]:
    storage = MemoryStorage()
    eng = Engine(storage, chunk_size=CS, workers=2)
    data = _image(tmp_path / "a.img", [os.urandom(CS), os.urandom(CS), os.urandom(CS)])
    eng.take_incremental("i1", {"vda": str(tmp_path / "a.img")})
    return storage, eng, data, _doc(storage, "i1")["disks"]["vda"]["chunks"]


def test_a_manifest_edited_to_point_at_another_existing_chunk_is_damage(tmp_path: Path) -> None:
    """Both chunks exist and hash to their ids: only the manifest's own checksum tells the list was edited."""
    storage, eng, data, ids = _two_chunk_backup(tmp_path)
    text = storage.get(manifest_key("i1")).decode().replace(ids[0], ids[1], 1)
    storage.put(manifest_key("i1"), text.encode())
    report = eng.verify("i1")
    assert not report.ok and "manifest manifests/i1.json is damaged" in report.problems[0]
    assert "fails its BLAKE3 checksum" in report.problems[0]
    with pytest.raises(BackupDamaged, match="backup i1: manifest"):
        eng.restore("i1", str(tmp_path / "out.img"))
    assert not (tmp_path / "out.img").exists()
    assert [b.backup_id for b in eng.list()] == []


def test_a_manifest_under_another_backups_name_is_damage(tmp_path: Path) -> None:
    storage, eng, _, _ = _two_chunk_backup(tmp_path)
    _image(tmp_path / "b.img", [os.urandom(CS)])
    eng.take_incremental("i2", {"vda": str(tmp_path / "b.img")})
    storage.put(manifest_key("i2"), storage.get(manifest_key("i1")))
    assert "it belongs to backup 'i1'" in eng.verify("i2").problems[0]
    relabelled = {**_doc(storage, "i1"), "backup_id": "i2"}  # the id edited too: the checksum covers it
    _put(storage, "i2", relabelled)
    assert "fails its BLAKE3 checksum" in eng.verify("i2").problems[0]
    with pytest.raises(BackupDamaged):
        eng.restore("i2", str(tmp_path / "out.img"))


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["disks"].update({"vdb": d["disks"].pop("vda")}),  # a disk renamed
        lambda d: d["disks"]["vda"].update(size=d["disks"]["vda"]["size"] - 1),  # a size shortened
        lambda d: d.update(created="2020-01-01T00:00:00+00:00"),
        lambda d: d.update(stored_bytes=d["stored_bytes"] + 1),
        lambda d: d["disks"]["vda"]["chunks"].reverse(),
    ],
    ids=["disk-renamed", "size", "created", "stored-bytes", "chunks-reordered"],
)
def test_any_edit_of_a_version_2_manifest_is_damage(tmp_path: Path, edit: Any) -> None:
    storage, eng, _, _ = _two_chunk_backup(tmp_path)
    doc = _doc(storage, "i1")
    edit(doc)
    _put(storage, "i1", doc)
    assert "is damaged" in eng.verify("i1").problems[0]


def test_version_1_manifests_without_a_checksum_still_restore(tmp_path: Path) -> None:
    storage, eng, data, _ = _two_chunk_backup(tmp_path)
    doc = _doc(storage, "i1")
    del doc["blake3"]
    doc["version"] = 1
    _put(storage, "i1", doc)
    assert eng.verify("i1").ok
    eng.restore("i1", str(tmp_path / "out.img"))
    assert (tmp_path / "out.img").read_bytes() == data
    # Still bound to its backup by the id it records: a copy under another name is damage.
    storage.put(manifest_key("i9"), storage.get(manifest_key("i1")))
    assert "belongs to backup 'i1'" in eng.verify("i9").problems[0]


# -- hostile manifests ------------------------------------------------------------------------------------

_ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**62, 2**63, 10**30, -1, 0, 1.5, float("inf"), 1e308]),
    st.text(max_size=20),
    st.sampled_from(["", "\x00", "../../etc/passwd", "a/b", "\ud800", "x" * 300, "0" * 64, "A" * 64, "f" * 63]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_KEYS = st.sampled_from(
    ["format", "version", "backup_id", "created", "chunk_hash", "chunk_encoding", "stored_bytes", "disks", "blake3"]
)
_DISK_KEYS = st.sampled_from(["size", "chunk_size", "chunks"])


@st.composite
def _mutation(draw: st.DrawFn) -> tuple[str, Any]:
    """(what, how) to change in a valid manifest document."""
    return draw(
        st.one_of(
            st.tuples(st.just("top"), st.tuples(_KEYS, _ODD)),
            st.tuples(st.just("drop"), _KEYS),
            st.tuples(st.just("disk"), st.tuples(_DISK_KEYS, _ODD)),
            st.tuples(st.just("disk-key"), _ODD),
            st.tuples(st.just("chunk"), st.tuples(st.integers(0, 5), _ODD)),
            st.tuples(st.just("chunks-len"), st.integers(-3, 3)),
            st.tuples(st.just("huge-disk"), st.sampled_from([(2**62, 512), (2**40, 512), (10**18, 64 * 1024 * 1024)])),
            st.tuples(st.just("disks"), st.integers(0, 300)),
        )
    )


def _apply(doc: dict[str, Any], mutation: tuple[str, Any]) -> dict[str, Any]:
    what, how = mutation
    disks = doc.get("disks")
    disk = next(iter(disks.values()), None) if isinstance(disks, dict) and disks else None
    if what == "top":
        doc[how[0]] = how[1]
    elif what == "drop":
        doc.pop(how, None)
    elif not isinstance(disk, dict):
        pass  # an earlier mutation took the disk away
    elif what == "disk":
        disk[how[0]] = how[1]
    elif what == "disk-key":
        doc["disks"] = {how if isinstance(how, str) else json.dumps(how): disk}
    elif what == "chunk" and isinstance(disk.get("chunks"), list):
        if how[0] < len(disk["chunks"]):
            disk["chunks"][how[0]] = how[1]
    elif what == "chunks-len" and isinstance(disk.get("chunks"), list):
        disk["chunks"] = disk["chunks"][: max(0, len(disk["chunks"]) + how)] + [None] * max(0, how)
    elif what == "huge-disk":
        disk["size"], disk["chunk_size"] = how
    elif what == "disks":
        doc["disks"] = {f"d{i}": disk for i in range(how)}
    return doc


_RAW = st.one_of(
    st.binary(max_size=200),
    st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 200_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.sampled_from([b"", b"null", b"[]", b'"x"', b"1e999999", b"{" + b'"a":1,' * 10 + b"}", b"\xff\xfe"]),
)


def _check_hostile(tmp_path: Path, storage: MemoryStorage, eng: Engine, data: bytes, raw: bytes) -> None:
    storage.put(manifest_key("i1"), raw)
    chunks_before = sorted(storage.list(PREFIX))
    report = eng.verify("i1")  # never raises: damage is a report
    out = tmp_path / "hostile.out"
    out.unlink(missing_ok=True)
    if report.ok:  # only a change that means nothing (an extra key): it must restore the very image
        eng.restore("i1", str(out))
        assert out.read_bytes() == data
        return
    assert report.problems[0].startswith("backup i1: manifest manifests/i1.json is damaged: "), report.problems
    with pytest.raises(BackupDamaged, match="backup i1: manifest"):
        eng.restore("i1", str(out))
    assert not out.exists()
    assert eng.list() == []
    assert eng.gc() == 0  # deletes nothing: it cannot know what the damaged manifest references
    assert sorted(storage.list(PREFIX)) == chunks_before
    assert b"manifests/i1.json is damaged" in storage.get(PENDING_KEY)
    storage.delete(PENDING_KEY)


class _Backup(tuple[MemoryStorage, Engine, bytes, dict[str, Any]]):
    def __repr__(self) -> str:  # hypothesis shows the arguments of a failing example: not 16 KB of image
        return "<backup i1>"


@pytest.fixture
def backup(tmp_path: Path) -> tuple[MemoryStorage, Engine, bytes, dict[str, Any]]:
    storage = MemoryStorage()
    eng = Engine(storage, chunk_size=CS, workers=2)
    data = _image(tmp_path / "a.img", [os.urandom(CS), bytes(CS), os.urandom(CS), os.urandom(CS)], os.urandom(7))
    eng.take_incremental("i1", {"vda": str(tmp_path / "a.img")})
    return _Backup((storage, eng, data, _doc(storage, "i1")))


_HOSTILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_HOSTILE
@given(mutations=st.lists(_mutation(), min_size=1, max_size=3))
def test_mutated_manifests_are_damage_never_a_crash(
    tmp_path: Path, backup: tuple[MemoryStorage, Engine, bytes, dict[str, Any]], mutations: list[tuple[str, Any]]
) -> None:
    storage, eng, data, good = backup
    doc: dict[str, Any] = json.loads(json.dumps(good))
    for m in mutations:
        doc = _apply(doc, m)
    try:
        raw = json.dumps(doc).encode()
    except (ValueError, UnicodeEncodeError):  # a lone surrogate: not even JSON, which is damage too
        raw = json.dumps(doc, ensure_ascii=True).encode()
    _check_hostile(tmp_path, storage, eng, data, raw)


@_HOSTILE
@given(raw=_RAW)
def test_hostile_bytes_as_a_manifest_are_damage_never_a_crash(
    tmp_path: Path, backup: tuple[MemoryStorage, Engine, bytes, dict[str, Any]], raw: bytes
) -> None:
    storage, eng, data, _ = backup
    _check_hostile(tmp_path, storage, eng, data, raw)


def test_a_huge_manifest_is_refused_before_it_is_read(
    backup: tuple[MemoryStorage, Engine, bytes, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmbackup.engine import manifest

    storage, eng, _, _ = backup
    monkeypatch.setattr(manifest, "MAX_BYTES", 100)
    reads: list[str] = []
    monkeypatch.setattr(storage, "get", lambda key, *a: reads.append(key) or b"")
    report = eng.verify("i1")
    assert "more than the 100 a valid one can take" in report.problems[0] and reads == []


@pytest.mark.parametrize("limit", [400, 5000])
def test_a_take_whose_manifest_would_be_too_large_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """400 bytes: refused before reading (100 chunks take 500 even as zeros); 5000: found while writing the
    manifest (100 data chunks take ~6800), which then never appears."""
    from vmbackup.engine import manifest
    from vmbackup.errors import TargetInvalid

    storage = MemoryStorage()
    _image(tmp_path / "a.img", [os.urandom(CS) for _ in range(100)])
    monkeypatch.setattr(manifest, "MAX_BYTES", limit)
    with pytest.raises(TargetInvalid, match="use a larger chunk size"):
        Engine(storage, chunk_size=CS).take_incremental("i1", {"vda": str(tmp_path / "a.img")})
    assert not storage.exists(manifest_key("i1")) and Engine(storage).list() == []
    assert storage.open_writers == 0
    if limit == 400:
        assert list(storage.list()) == []


@pytest.mark.parametrize("key", ["", "a/b", "../x", "a b", "\x00", "x" * 65, ".hidden"])
def test_unsafe_disk_keys_are_refused_at_take(tmp_path: Path, key: str) -> None:
    from vmbackup.errors import TargetInvalid

    _image(tmp_path / "a.img", [os.urandom(CS)])
    with pytest.raises(TargetInvalid, match="invalid disk key"):
        Engine(MemoryStorage(), chunk_size=CS).take_incremental("i1", {key: str(tmp_path / "a.img")})


@pytest.mark.parametrize("name", ["a b", "x.y", "sub/dir"])
def test_gc_counts_a_manifest_it_cannot_name_as_damage(
    backup: tuple[MemoryStorage, Engine, bytes, dict[str, Any]], name: str
) -> None:
    """A file under manifests/ that is no backup we wrote still blocks collection: skipping it could delete the
    chunks of a backup, keeping them costs only space."""
    storage, eng, _, _ = backup
    storage.objects[f"manifests/{name}.json"] = storage.get(manifest_key("i1"))  # past the key check
    storage.delete(manifest_key("i1"))
    chunks = sorted(storage.list(PREFIX))
    assert eng.gc() == 0 and sorted(storage.list(PREFIX)) == chunks
    assert eng.list() == []
