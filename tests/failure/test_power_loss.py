"""Power cuts at every step of a take (normal and incremental) and of a delete with its collection.

`powerloss.PowerLossStorage` records each file-system step LocalStorage would take; after the operation ran, every
prefix of those steps is turned into what a power cut there could leave (only the durable state, everything,
and every "all but one" / "only one" choice of the name changes not yet durable).  In each, every backup that
is visible (its meta or manifest exists) must verify and restore byte for byte, the backups that existed
before must all be there, and the same holds after `Engine.recover()`.  The last tests check that the sweep
notices the two ordering bugs it is there for: a manifest written before its chunks' names are durable, and a
manifest removal that is not durable before its chunks go.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.failure.powerloss import PowerLossStorage
from vmbackup.engine import Engine, chunkstore
from vmbackup.engine.archive import meta_key
from vmbackup.engine.chunkstore import ChunkStore, ChunkWriter
from vmbackup.engine.manifest import manifest_key
from vmbackup.storage import MemoryStorage

CS = 4096


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunkstore, "FLUSH_EVERY", 3)  # several flushes per take


class World:
    """Backups taken on a PowerLossStorage, and the images each must restore to."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.storage = PowerLossStorage()
        self.engine = Engine(self.storage, chunk_size=CS, workers=2)
        self.images: dict[str, dict[str, bytes]] = {}  # backup id -> disk key -> bytes ("disk" for normal)

    def image(self, name: str, data: bytes) -> str:
        path = self.tmp / name
        path.write_bytes(data)
        return str(path)

    def take_normal(self, bid: str, data: bytes) -> None:
        self.engine.take_normal(bid, self.image(f"{bid}.img", data))
        self.images[bid] = {"disk": data}

    def take_incremental(self, bid: str, disks: dict[str, bytes]) -> None:
        self.engine.take_incremental(bid, {k: self.image(f"{bid}-{k}.img", d) for k, d in disks.items()})
        self.images[bid] = dict(disks)


def _blocks(*parts: bytes) -> bytes:
    return b"".join(parts)


def _random(n: int) -> bytes:
    return os.urandom(n)


def _problems(world: World, state: dict[str, bytes], required: set[str], where: str) -> list[str]:
    storage = MemoryStorage()
    storage.objects.update(state)
    eng = Engine(storage, chunk_size=CS, workers=2)
    out = []
    for phase in ("after the cut", "after recover()"):
        visible = {bid for bid in world.images if storage.exists(meta_key(bid)) or storage.exists(manifest_key(bid))}
        for bid in sorted(required - visible):
            out.append(f"{where}, {phase}: backup {bid} is gone")
        for bid in sorted(visible):
            report = eng.verify(bid)
            if not report.ok:
                out.append(f"{where}, {phase}: backup {bid} is visible but damaged: {report.problems[:2]}")
                continue
            disks = world.images[bid]
            kind_normal = list(disks) == ["disk"] and storage.exists(meta_key(bid))
            targets = {k: str(world.tmp / f"restore-{bid}-{k}") for k in disks}
            for p in targets.values():
                Path(p).unlink(missing_ok=True)
            eng.restore(bid, targets["disk"] if kind_normal else targets)
            for k, p in targets.items():
                if Path(p).read_bytes() != disks[k]:
                    out.append(f"{where}, {phase}: backup {bid} restores wrong data on {k}")
        if phase == "after the cut":
            eng.recover()
    return out


def sweep(world: World, start: int, required: set[str]) -> tuple[int, list[str]]:
    """Cut the power after each step from `start` on; returns (distinct states checked, problems)."""
    seen: set[frozenset[tuple[str, bytes]]] = set()
    problems: list[str] = []
    steps = world.storage.steps
    for cut in range(start, len(steps) + 1):
        if cut > start and steps[cut - 1].op == "write":
            continue  # a write changes nothing a cut could leave that the fsync after it does not
        for state in world.storage.crash_states(cut):
            key = frozenset(state.items())
            if key in seen:
                continue
            seen.add(key)
            step = steps[cut - 1] if cut else None
            problems += _problems(world, state, required, f"cut after step {cut} ({step})")
            if len(problems) > 20:
                return len(seen), problems
    return len(seen), problems


def _older(world: World) -> bytes:
    """A normal and an incremental of two disks; returns a chunk the next backups share with them."""
    shared = _random(CS)
    world.take_normal("old-n", _blocks(_random(2 * CS + 100), bytes(CS), _random(CS)))
    world.take_incremental(
        "old-i", {"vda": _blocks(shared, _random(3 * CS), bytes(2 * CS), _random(CS - 7)), "vdb": _random(2 * CS)}
    )
    return shared


def test_power_cut_at_every_step_of_an_incremental_take(tmp_path: Path) -> None:
    world = World(tmp_path)
    shared = _older(world)
    start = len(world.storage.steps)
    old_vda = world.images["old-i"]["vda"]
    # Half the chunks reused (batch.keep), half new, a new disk too.
    changed = old_vda[: 2 * CS] + _random(2 * CS) + old_vda[4 * CS :]
    world.take_incremental("new-i", {"vda": changed, "vdc": _blocks(shared, _random(3 * CS + 1))})
    states, problems = sweep(world, start, {"old-n", "old-i"})
    assert problems == []
    assert states > 10
    print(f"incremental take: {len(world.storage.steps) - start} steps, {states} distinct power-cut states checked")


def test_power_cut_at_every_step_of_a_normal_take(tmp_path: Path) -> None:
    world = World(tmp_path)
    _older(world)
    start = len(world.storage.steps)
    world.take_normal("new-n", _blocks(_random(3 * CS), bytes(5 * CS), _random(100)))
    states, problems = sweep(world, start, {"old-n", "old-i"})
    assert problems == [] and states >= 3  # before, with the archive alone, with its meta
    print(f"normal take: {len(world.storage.steps) - start} steps, {states} distinct power-cut states checked")


def test_power_cut_at_every_step_of_a_delete_and_its_collection(tmp_path: Path) -> None:
    world = World(tmp_path)
    _older(world)
    vda = world.images["old-i"]["vda"]
    world.take_incremental("keep-i", {"vda": vda[: 3 * CS] + _random(CS) + vda[4 * CS :]})
    start = len(world.storage.steps)
    world.engine.delete("old-i")  # collects at once: nothing else holds the store
    world.engine.delete("old-n")
    world.engine.gc()
    assert len(world.storage.steps) > start + 5
    # Deleted backups may be back after a cut (their removal was not durable yet), but then they must be whole.
    states, problems = sweep(world, start, {"keep-i"})
    assert problems == [] and states > 3
    print(f"delete + collection: {len(world.storage.steps) - start} steps, {states} distinct states checked")


# -- the sweep notices the ordering bugs it is there for ---------------------------------------------------------


def _sweep_of_a_take(tmp_path: Path) -> list[str]:
    world = World(tmp_path)
    _older(world)
    start = len(world.storage.steps)
    world.take_incremental("new-i", {"vda": _random(6 * CS + 5)})
    return sweep(world, start, {"old-n", "old-i"})[1]


def test_the_sweep_catches_a_manifest_written_before_its_chunks_are_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planted: the chunk writer returns with its chunks flushed (visible, data durable) but the batch, whose end
    makes their names durable, still open; it ends only after the manifest is written."""
    left_open: list[Callable[[], None]] = []

    @contextmanager
    def writer_ending_late(self: ChunkStore) -> Iterator[ChunkWriter]:
        cm = self.storage.batch()
        batch = cm.__enter__()
        yield ChunkWriter(self, batch)
        batch.flush()
        left_open.append(lambda: cm.__exit__(None, None, None))

    monkeypatch.setattr(ChunkStore, "writer", writer_ending_late)
    real_take = Engine.take_incremental

    def take_then_end_the_batch(self: Engine, *args: object, **kwargs: object) -> object:
        try:
            return real_take(self, *args, **kwargs)  # type: ignore[arg-type]
        finally:
            while left_open:
                left_open.pop()()

    monkeypatch.setattr(Engine, "take_incremental", take_then_end_the_batch)
    problems = _sweep_of_a_take(tmp_path)
    assert any("backup new-i is visible but damaged" in p and "is missing" in p for p in problems), problems


def test_the_sweep_catches_a_manifest_removal_that_is_not_durable_before_its_chunks_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_delete = PowerLossStorage.delete

    def never_durable(self: PowerLossStorage, key: str, *, durable: bool = False) -> int:
        return real_delete(self, key)

    monkeypatch.setattr(PowerLossStorage, "delete", never_durable)
    world = World(tmp_path)
    _older(world)
    start = len(world.storage.steps)
    world.engine.delete("old-i")
    problems = sweep(world, start, {"old-n"})[1]
    assert any("backup old-i is visible but damaged" in p for p in problems), problems


def test_a_correct_take_passes_the_same_sweep(tmp_path: Path) -> None:
    assert _sweep_of_a_take(tmp_path) == []
