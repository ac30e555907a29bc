"""A storage that records every file-system step LocalStorage takes and can show what a power cut after any step
would leave: only what was durable, plus any choice of the rest.

It keeps LocalStorage's sequence exactly (`tests/unit/storage/test_durability.py` compares the two step by
step): a writer creates `<dir>/.tmp-<name>-<n>`, writes, fsyncs it, renames it over the key and fsyncs the
directory (and the parent of any directory it created); a batch creates and writes its temporaries, fsyncs and
renames them at each flush and fsyncs the directories it touched when it ends; a delete unlinks, and fsyncs the
directory only when durable.  Reads are MemoryStorage's, on what is visible now.

After a power cut (the model of POSIX, not of one file system):
- a file's data is what it held at its last fsync (nothing, if it was never fsynced);
- a name change (create, rename, unlink, mkdir) survives if its directory was fsynced after it; any other may
  or may not survive, in any combination (`crash_states` enumerates the ones that matter: none of them, all of
  them, all but one, only one);
- a key is there if its name survives and so do the names of the directories above it.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from vmbackup.storage.base import Batch, ObjectMissing, Writer, check_key
from vmbackup.storage.memory import MemoryStorage

_NAME_OPS = ("mkdir", "create", "rename", "unlink")


@dataclass(frozen=True)
class Step:
    """One file-system step. `path` is relative to the storage root ("" is the root); a rename moves `src`
    to `path`; an fsync's `data` is what the file holds at that moment."""

    op: str  # mkdir, create, write, fsync, rename, fsync_dir, unlink
    path: str
    src: str = ""
    data: bytes | None = None


def parent(path: str) -> str:
    return path.rpartition("/")[0]


class _Writer:
    def __init__(self, store: PowerLossStorage, tmp: str) -> None:
        self._store, self._tmp = store, tmp
        self.parts: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        self.parts.append(bytes(data))
        self._store._record(Step("write", self._tmp))
        return len(data)


class _Batch:
    def __init__(self, store: PowerLossStorage) -> None:
        self._store = store
        self._pending: list[tuple[str, str, bytes]] = []  # temporary, key, data
        self._dirty: set[str] = set()
        self._mutex = threading.Lock()

    def put(self, key: str, data: bytes | bytearray | memoryview, /) -> None:
        check_key(key)
        created = self._store._make_dirs(parent(key))
        tmp = self._store._temp(key)
        self._store._record(Step("create", tmp), Step("write", tmp))
        with self._mutex:
            self._dirty.update(parent(c) for c in created)
            self._pending.append((tmp, key, bytes(data)))

    def keep(self, key: str, /) -> None:
        with self._mutex:
            self._dirty.add(parent(key))

    def flush(self) -> list[str]:
        with self._mutex:
            items, self._pending = self._pending, []
        s = self._store
        s._record(*(Step("fsync", tmp, data=data) for tmp, _, data in items))
        for tmp, key, data in items:
            s._rename(tmp, key, data)
        with self._mutex:
            self._dirty.update(parent(key) for _, key, _ in items)
        return [key for _, key, _ in items]

    def finish(self) -> None:
        self.flush()
        with self._mutex:
            dirs, self._dirty = sorted(self._dirty, key=len, reverse=True), set()
        self._store._record(*(Step("fsync_dir", d) for d in dirs))

    def discard(self) -> None:
        with self._mutex:
            items, self._pending = self._pending, []
        self._store._record(*(Step("unlink", tmp) for tmp, _, _ in items))


class PowerLossStorage(MemoryStorage):
    def __init__(self) -> None:
        super().__init__()
        self.steps: list[Step] = []
        self._dirs: set[str] = {""}
        self._record_mutex = threading.Lock()
        self._n = itertools.count()

    # -- recording ------------------------------------------------------------------------------------------

    def _record(self, *steps: Step) -> None:
        with self._record_mutex:
            self.steps.extend(steps)

    def _temp(self, key: str) -> str:
        d, _, name = key.rpartition("/")
        return f"{d}/.tmp-{name}-{next(self._n)}" if d else f".tmp-{name}-{next(self._n)}"

    def _make_dirs(self, d: str) -> list[str]:
        """Like LocalStorage's: the directories created, deepest first (mkdir steps top down)."""
        with self._record_mutex:
            created = []
            p = d
            while p not in self._dirs:
                created.append(p)
                p = parent(p)
            for c in reversed(created):
                self._dirs.add(c)
                self.steps.append(Step("mkdir", c))
        return created

    def _rename(self, tmp: str, key: str, data: bytes) -> None:
        with self._record_mutex, self._mutex:  # the step and the visible change together, in step order
            self.steps.append(Step("rename", key, src=tmp))
            self.objects[key] = data

    # -- the Storage contract, the way LocalStorage does it -----------------------------------------------------

    @contextmanager
    def open_writer(self, key: str) -> Iterator[Writer]:
        check_key(key)
        created = self._make_dirs(parent(key))
        tmp = self._temp(key)
        self._record(Step("create", tmp))
        w = _Writer(self, tmp)
        try:
            yield w
        except BaseException:
            self._record(Step("unlink", tmp))
            raise
        data = b"".join(w.parts)
        self._record(Step("fsync", tmp, data=data))
        self._rename(tmp, key, data)
        self._record(Step("fsync_dir", parent(key)), *(Step("fsync_dir", parent(c)) for c in created))

    @contextmanager
    def batch(self) -> Iterator[Batch]:
        b = _Batch(self)
        try:
            yield b
            b.finish()
        except BaseException:
            b.discard()
            raise

    def delete(self, key: str, *, durable: bool = False) -> int:
        with self._record_mutex, self._mutex:
            try:
                size = len(self.objects.pop(check_key(key)))
            except KeyError:
                raise ObjectMissing(key) from None
            self.steps.append(Step("unlink", key))
            if durable:
                self.steps.append(Step("fsync_dir", parent(key)))
        return size

    # -- power cuts -----------------------------------------------------------------------------------------------

    def crash_states(self, cut: int) -> Iterator[dict[str, bytes]]:
        """The distinct sets of objects a power cut right after step `cut` (the first `cut` steps done) may
        leave: with none, all, all but one and only one of the name changes not yet durable."""
        steps = self.steps[:cut]
        synced_at: dict[str, int] = {}  # directory -> index of its last fsync before the cut
        for i, s in enumerate(steps):
            if s.op == "fsync_dir":
                synced_at[s.path] = i
        durable, loose = [], []
        for i, s in enumerate(steps):
            if s.op in _NAME_OPS:
                (durable if synced_at.get(_dir_of(s), -1) > i else loose).append(i)
        # Only name changes of keys and directories matter to what is visible; temporaries never are.
        loose = [i for i in loose if not _is_temp(steps[i].path)]
        choices: list[set[int]] = [set(), set(loose)]
        choices += [set(loose) - {i} for i in loose] + [{i} for i in loose]
        seen: set[frozenset[tuple[str, bytes]]] = set()
        for keep in choices:
            state = _replay(steps, sorted(set(durable) | keep))
            fingerprint = frozenset(state.items())
            if fingerprint not in seen:
                seen.add(fingerprint)
                yield state


def _dir_of(step: Step) -> str:
    return parent(step.path)


def _is_temp(path: str) -> bool:
    return path.rpartition("/")[2].startswith(".tmp-")


def _replay(steps: list[Step], name_ops: list[int]) -> dict[str, bytes]:
    """The visible objects after the given name changes, with every file holding its data as of its last
    fsync (before the cut)."""
    data: dict[str, bytes] = {}  # file (by the temporary it was created as) -> durable content
    for s in steps:
        if s.op == "fsync" and s.data is not None:
            data[s.path] = s.data
    names: dict[str, str] = {}  # path -> file (its temporary name)
    dirs = {""}
    for i in name_ops:
        s = steps[i]
        if s.op == "mkdir":
            dirs.add(s.path)
        elif s.op == "create":
            names[s.path] = s.path
        elif s.op == "rename":
            names[s.path] = names.pop(s.src, s.src)
        elif s.op == "unlink":
            names.pop(s.path, None)

    def reachable(path: str) -> bool:
        p = parent(path)
        while p:
            if p not in dirs:
                return False
            p = parent(p)
        return True

    return {path: data.get(file, b"") for path, file in names.items() if not _is_temp(path) and reachable(path)}
