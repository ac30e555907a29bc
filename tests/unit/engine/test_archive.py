"""Normal backups: sparse .tar.zst archives readable by stock tools and by our own reader."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import ImageFactory, MiB, overwrite
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vmbackup.engine import Engine
from vmbackup.engine.archive import archive_key
from vmbackup.errors import BackupDamaged
from vmbackup.storage import LocalStorage, MemoryStorage, Storage


def test_normal_round_trip_to_new_file_is_identical_and_sparse(
    storage: Storage, make_image: ImageFactory, tmp_path: Path
) -> None:
    image = make_image()
    stats = Engine(storage).take_normal("n0000000000001", str(image))
    assert stats.logical_bytes == 6 * MiB
    # Holes and the written-zero MiB are not stored: only ~100 KB random + compressible text + 70 KB random.
    assert stats.zero_bytes > 4 * MiB
    assert stats.new_bytes_stored < 400_000
    out = tmp_path / "restored.img"
    Engine(storage).restore("n0000000000001", str(out))
    assert out.read_bytes() == image.read_bytes()
    assert os.stat(out).st_blocks * 512 < 2 * MiB  # the zeros came back as holes
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_stock_zstd_and_tar_restore_identical_image(
    local: LocalStorage, make_image: ImageFactory, tmp_path: Path
) -> None:
    image = make_image()
    Engine(local).take_normal("n0000000000002", str(image))
    out = tmp_path / "x"
    out.mkdir()
    archive = local.path_of(archive_key("n0000000000002"))
    subprocess.run(f"zstd -q -dc {archive} | tar -xSf -", shell=True, cwd=out, check=True)
    restored = out / "n0000000000002.img"
    assert restored.read_bytes() == image.read_bytes()
    # Holes stay holes; the MiB of zeros the image holds as data is stored (compressed) as data, so stock tar
    # writes it back (our own restore keeps it a hole).
    assert os.stat(restored).st_blocks * 512 < 3 * MiB


def test_python_tarfile_reads_the_sparse_member(local: LocalStorage, make_image: ImageFactory, tmp_path: Path) -> None:
    image = make_image()
    Engine(local).take_normal("n0000000000003", str(image))
    tar = tmp_path / "a.tar"
    subprocess.run(["zstd", "-q", "-d", str(local.path_of(archive_key("n0000000000003"))), "-o", str(tar)], check=True)
    with tarfile.open(tar) as t:
        (member,) = t.getmembers()
        assert member.name == "n0000000000003.img" and member.size == 6 * MiB
        assert member.sparse and sum(n for _, n in member.sparse) < 3 * MiB
        f = t.extractfile(member)
        assert f is not None and f.read() == image.read_bytes()


def test_image_of_only_holes_and_empty_image(storage: Storage, tmp_path: Path) -> None:
    eng = Engine(storage)
    for i, size in enumerate((0, 3 * MiB + 5)):
        img = tmp_path / f"empty{i}.img"
        with open(img, "wb") as f:
            f.truncate(size)
        eng.take_normal(f"e{i}", str(img))
        out = tmp_path / f"out{i}.img"
        eng.restore(f"e{i}", str(out))
        assert out.stat().st_size == size and out.read_bytes() == bytes(size)


def test_image_over_8_gib_uses_pax_size_and_restores_with_tar(local: LocalStorage, tmp_path: Path) -> None:
    img = tmp_path / "huge.img"
    size = 9 * 1024 * MiB + 512  # sparse: only two small data regions
    with open(img, "wb") as f:
        f.truncate(size)
    overwrite(img, 5, b"head")
    overwrite(img, size - 4096, b"tail" * 1024)
    Engine(local).take_normal("big", str(img))
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(f"zstd -q -dc {local.path_of(archive_key('big'))} | tar -xSf -", shell=True, cwd=out, check=True)
    restored = out / "big.img"
    assert restored.stat().st_size == size
    with open(restored, "rb") as f:
        assert f.read(16) == bytes(5) + b"head" + bytes(7)
        f.seek(size - 4096)
        assert f.read() == b"tail" * 1024


def test_restore_in_place_over_existing_file(storage: Storage, make_image: ImageFactory) -> None:
    image = make_image()
    original = image.read_bytes()
    eng = Engine(storage)
    eng.take_normal("n1", str(image))
    overwrite(image, MiB + 10, b"garbage" * 1000)  # dirty a region the backup holds as zeros
    overwrite(image, 50, b"changed")
    with open(image, "ab") as f:
        f.write(b"grown")
    eng.restore("n1", str(image))
    assert image.read_bytes() == original


def test_in_place_over_device_like_target_zeroes_holes(storage: Storage, make_image: ImageFactory) -> None:
    """Block devices keep old data in regions we skip; force that path on a regular file."""
    from vmbackup.engine.restore import restore_normal

    image = make_image()
    original = image.read_bytes()
    Engine(storage).take_normal("n2", str(image))
    overwrite(image, MiB + 10, b"garbage" * 1000)
    overwrite(image, 5 * MiB, b"more garbage" * 1000)
    restore_normal(storage, "n2", str(image), None, force_overwrite=True)
    assert image.read_bytes() == original


def test_progress_reaches_total(storage: Storage, make_image: ImageFactory, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    Engine(storage).take_normal("p1", str(make_image()), progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (6 * MiB, 6 * MiB)
    assert all(a[0] <= b[0] for a, b in zip(calls, calls[1:], strict=False))


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", ".x", "x" * 65])
def test_invalid_backup_id_is_refused(storage: Storage, make_image: ImageFactory, bad: str) -> None:
    from vmbackup.errors import InvalidBackupId

    with pytest.raises(InvalidBackupId):
        Engine(storage).take_normal(bad, str(make_image()))


def test_archives_of_the_previous_writer_still_verify_and_restore(
    storage: Storage, make_image: ImageFactory, tmp_path: Path
) -> None:
    """Up to e449f17 a normal backup was one multi-threaded zstd frame with 64 KiB zero blocks cut out of the
    sparse map; same format and version, so it must keep restoring."""
    import json

    import blake3
    import zstandard

    from vmbackup.engine import tarformat as tf
    from vmbackup.engine.archive import meta_key

    image = make_image()
    data = image.read_bytes()
    block, extents = 64 * 1024, []
    for off in range(0, len(data), block):
        piece = data[off : off + block]
        if piece.count(0) == len(piece):
            continue
        if extents and sum(extents[-1]) == off:
            extents[-1] = (extents[-1][0], extents[-1][1] + len(piece))
        else:
            extents.append((off, len(piece)))
    data_bytes = sum(n for _, n in extents)
    body = (
        tf.member_start("old.img", len(data), extents, 0)
        + b"".join(data[o : o + n] for o, n in extents)
        + tf.member_end(data_bytes)
    )
    archive = zstandard.ZstdCompressor(level=3, threads=2, write_checksum=True).compress(body)
    storage.put(archive_key("old"), archive)
    meta = {
        "format": "vmbackup-normal",
        "version": 1,
        "backup_id": "old",
        "created": "2026-01-01T00:00:00+00:00",
        "member_name": "old.img",
        "logical_bytes": len(data),
        "data_bytes": data_bytes,
        "tar_bytes": len(body),
        "tar_blake3": blake3.blake3(body).hexdigest(),
        "archive_bytes": len(archive),
        "stored_bytes": len(archive) + 400,
        "source": str(image),
    }
    storage.put(meta_key("old"), json.dumps(meta).encode())
    eng = Engine(storage)
    assert eng.verify("old").ok
    eng.restore("old", str(tmp_path / "old.img"))
    assert (tmp_path / "old.img").read_bytes() == data


def test_archive_is_independent_frames_and_memory_does_not_follow_cores(
    storage: Storage, make_image: ImageFactory
) -> None:
    """Several frames (so no zstd worker pool sized by the core count), each checksummed."""
    from vmbackup.engine import archive

    img = make_image(size=12 * MiB)
    with open(img, "r+b") as f:
        f.seek(6 * MiB)
        f.write(os.urandom(5 * MiB))
    Engine(storage, workers=64).take_normal("n1", str(img))
    raw = storage.get(archive_key("n1"))
    frames = 0
    pos = 0
    while pos < len(raw):
        pos += _frame_len(raw[pos:])
        frames += 1
    assert frames >= 5 * MiB // archive.FRAME_BYTES
    assert archive._THREADS_MAX <= 3


def _frame_len(data: bytes) -> int:
    import zstandard

    params = zstandard.get_frame_parameters(data)
    assert params.has_checksum
    # python-zstandard has no frame-size helper; decompress with a one-frame object and measure what it used.
    d = zstandard.ZstdDecompressor().decompressobj()
    d.decompress(data)
    return len(data) - len(d.unused_data)


def _meta(storage: Storage, backup_id: str) -> dict[str, object]:
    import json

    from vmbackup.engine.archive import meta_key

    return dict(json.loads(storage.get(meta_key(backup_id))))


def _put_meta(storage: Storage, backup_id: str, meta: dict[str, object]) -> None:
    """Store an edited meta, with its checksum recomputed (version 3), so what is tested is the edit itself."""
    import json

    from vmbackup.engine.archive import meta_checksum, meta_key

    if meta.get("version") == 3:
        meta = {**meta, "blake3": meta_checksum(meta)}
    storage.put(meta_key(backup_id), json.dumps(meta).encode())


def _image_with_data(make_image: ImageFactory, size: int = 14 * MiB) -> Path:
    img = make_image(size=size)
    with open(img, "r+b") as f:
        f.seek(6 * MiB)
        f.write(os.urandom(6 * MiB + 4096))
    return img


def test_meta_indexes_every_frame_and_parallel_restore_is_identical(
    storage: Storage, make_image: ImageFactory, tmp_path: Path
) -> None:
    from vmbackup.engine.restore import restore_normal

    img = _image_with_data(make_image)
    Engine(storage).take_normal("n1", str(img))
    meta = _meta(storage, "n1")
    frames = meta["frames"]
    assert meta["version"] == 3 and isinstance(frames, list) and len(frames) >= 4
    raw = storage.get(archive_key("n1"))
    pos = 0
    for csize, _ in frames:  # every index entry is exactly one zstd frame
        assert _frame_len(raw[pos:]) == csize
        pos += csize
    assert pos == len(raw) == meta["archive_bytes"]
    for threads in (1, 4):
        out = tmp_path / f"t{threads}.img"
        calls: list[tuple[int, int]] = []
        restore_normal(storage, "n1", str(out), lambda d, t, c=calls: c.append((d, t)), threads=threads)
        assert out.read_bytes() == img.read_bytes()
        assert all(a[0] <= b[0] for a, b in zip(calls, calls[1:], strict=False)) and calls[-1] == (14 * MiB,) * 2


def test_multi_frame_archive_with_a_version_1_meta_still_restores(
    storage: Storage, make_image: ImageFactory, tmp_path: Path
) -> None:
    """The writer of dd69ad1 wrote independent frames but no index (meta version 1): read as one stream."""
    img = _image_with_data(make_image)
    eng = Engine(storage)
    eng.take_normal("n1", str(img))
    meta = _meta(storage, "n1")
    del meta["frames"]
    meta["version"] = 1
    _put_meta(storage, "n1", meta)
    assert eng.verify("n1").ok
    eng.restore("n1", str(tmp_path / "out.img"))
    assert (tmp_path / "out.img").read_bytes() == img.read_bytes()


def test_a_damaged_frame_is_named_and_nothing_is_left(
    storage: Storage, make_image: ImageFactory, tmp_path: Path
) -> None:
    from conftest import flip_byte

    img = _image_with_data(make_image)
    eng = Engine(storage)
    eng.take_normal("n1", str(img))
    frames = _meta(storage, "n1")["frames"]
    assert isinstance(frames, list)
    at = sum(c for c, _ in frames[:3]) + frames[3][0] // 2  # the middle of frame 3
    storage.put(archive_key("n1"), flip_byte(storage.get(archive_key("n1")), at))
    report = eng.verify("n1")
    assert not report.ok and "archive normal/n1.tar.zst is corrupt: frame 3 " in report.problems[0]
    with pytest.raises(BackupDamaged, match="frame 3 "):
        eng.restore("n1", str(tmp_path / "out.img"))
    assert list(tmp_path.glob("*out.img*")) == []


def test_a_wrong_frame_index_or_extra_bytes_are_damage(storage: Storage, make_image: ImageFactory) -> None:
    img = _image_with_data(make_image)
    eng = Engine(storage)
    eng.take_normal("n1", str(img))
    good = _meta(storage, "n1")
    frames = good["frames"]
    assert isinstance(frames, list)
    # Sizes that do not add up: the meta is damaged.
    _put_meta(storage, "n1", {**good, "frames": frames[:-1]})
    report = eng.verify("n1")
    assert not report.ok and "metadata normal/n1.meta.json is damaged" in report.problems[0]
    # Adds up but cuts the archive in the wrong places (two entries swapped): the frames do not decompress.
    _put_meta(storage, "n1", {**good, "frames": [frames[1], frames[0], *frames[2:]]})
    assert not eng.verify("n1").ok
    # Intact index, bytes appended to the archive.
    _put_meta(storage, "n1", good)
    assert eng.verify("n1").ok
    storage.put(archive_key("n1"), storage.get(archive_key("n1")) + b"\0" * 10)
    report = eng.verify("n1")
    assert not report.ok and "unexpected data after the end" in report.problems[0]


# -- hostile metas ------------------------------------------------------------------------------------------------

_ODD = [None, True, -1, 0, 1, 2**62, 2**63, 10**30, 1.5, "", "x", "\x00", "0" * 64, [], [[1, 1]], [[0, 5]], {}]
_FIELDS = ["format", "version", "backup_id", "created", "member_name", "logical_bytes", "data_bytes", "tar_bytes",
           "tar_blake3", "archive_bytes", "stored_bytes", "source", "frames", "blake3"]  # fmt: skip


def _hostile_meta_check(storage: Storage, tmp_path: Path, data: bytes, raw: bytes, signed: bool) -> None:
    from vmbackup.engine.archive import meta_key
    from vmbackup.errors import TargetInvalid

    storage.put(meta_key("n1"), raw)
    eng = Engine(storage)
    report = eng.verify("n1")  # never raises: damage is a report
    out = tmp_path / "hostile.out"
    out.unlink(missing_ok=True)
    eng.list()
    if report.ok:  # only a change that means nothing: the very image
        eng.restore("n1", str(out))
        assert out.read_bytes() == data
        return
    assert report.problems[0].startswith("backup n1: "), report.problems
    # A re-signed meta is one a forger (or a bug) wrote: its numbers may also be refused by the target.
    with pytest.raises((BackupDamaged, TargetInvalid) if signed else BackupDamaged):
        eng.restore("n1", str(out))
    assert not out.exists()


class _Backup(tuple[MemoryStorage, bytes, dict[str, object]]):
    def __repr__(self) -> str:  # hypothesis shows a failing example's arguments: not 9 MiB of image
        return "<backup n1>"


@pytest.fixture
def normal_backup(make_image: ImageFactory) -> tuple[MemoryStorage, bytes, dict[str, object]]:
    storage = MemoryStorage()
    img = _image_with_data(make_image, size=9 * MiB)
    Engine(storage).take_normal("n1", str(img))
    return _Backup((storage, img.read_bytes(), _meta(storage, "n1")))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edits=st.lists(st.tuples(st.sampled_from(_FIELDS), st.sampled_from(_ODD) | st.integers()), min_size=1, max_size=3),
    drop=st.lists(st.sampled_from(_FIELDS), max_size=2),
    signed=st.booleans(),
)
@example(edits=[("logical_bytes", 2**62)], drop=[], signed=True)  # a size no file system holds
@example(edits=[("frames", [[1, 1]] * 1000)], drop=[], signed=True)
@example(edits=[("member_name", "other.img")], drop=["blake3"], signed=False)
def test_hostile_metas_are_damage_never_a_crash(
    normal_backup: tuple[MemoryStorage, bytes, dict[str, object]],
    tmp_path: Path,
    edits: list[tuple[str, object]],
    drop: list[str],
    signed: bool,
) -> None:
    """Fields replaced by values of any type and size, or dropped; `signed`: the checksum recomputed afterwards,
    so the checks behind it (types, ranges, sizes adding up, the archive itself) are what must hold."""
    import json

    from vmbackup.engine.archive import meta_checksum

    storage, data, good = normal_backup
    meta = dict(good)
    for name, value in edits:
        meta[name] = value
    for name in drop:
        meta.pop(name, None)
    if signed:
        meta["blake3"] = meta_checksum(meta)
    _hostile_meta_check(storage, tmp_path, data, json.dumps(meta).encode(), signed)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300) | st.integers(1, 100_000).map(lambda n: b"[" * n + b"]" * n))
def test_hostile_bytes_as_a_meta_are_damage_never_a_crash(
    normal_backup: tuple[MemoryStorage, bytes, dict[str, object]], tmp_path: Path, raw: bytes
) -> None:
    storage, data, _ = normal_backup
    _hostile_meta_check(storage, tmp_path, data, raw, False)
