"""LocalStorage takes exactly the file-system steps the power-loss fake models (tests/failure/powerloss.py), in the
same order: so the power-cut sweeps of the engine (tests/failure/test_power_loss.py) are sweeps of what
LocalStorage really does, and a change to its fsyncs or renames shows up here."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.failure.powerloss import PowerLossStorage, Step
from vmbackup.storage import LocalStorage, Storage

_TEMP = re.compile(r"\.tmp-(.*)-[0-9a-f]+\Z")
Event = tuple[str, ...]


def _norm(path: str) -> str:
    d, _, name = path.rpartition("/")
    m = _TEMP.match(name)
    return f"tmp:{d + '/' if d else ''}{m.group(1)}" if m else path


def _canonical(events: list[Event]) -> list[Event]:
    """Directory fsyncs that follow one another are unordered among themselves (LocalStorage sorts only by depth)."""
    out: list[Event] = []
    run: list[Event] = []
    for e in [*events, ("end",)]:
        if e[0] == "fsync_dir":
            run.append(e)
            continue
        out += sorted(run, key=lambda r: (-len(r[1]), r[1]))
        run = []
        if e[0] != "end":
            out.append(e)
    return out


def _scenario(s: Storage) -> None:
    a, b, c, d = ("chunks/" + x[:2] + "/" + x for x in ("ab" * 32, "cd" * 32, "ef" * 32, "ab" * 31 + "00"))
    s.put("manifests/one.json", b"first")  # creates manifests/
    s.put("manifests/two.json", b"second")
    s.put(c, b"an existing chunk")
    with s.batch() as batch:
        batch.put(a, b"chunk a")
        batch.put(b, b"chunk b")
        batch.flush()
        batch.keep(c)
        batch.put(d, b"chunk d")
    s.delete(b)
    s.delete("manifests/one.json", durable=True)
    with pytest.raises(RuntimeError), s.open_writer("normal/x.tar.zst") as w:
        w.write(b"never finished")
        raise RuntimeError("a failed write")
    s.put("gc-pending", b"at the root")


def _fake_steps() -> list[Event]:
    fake = PowerLossStorage()
    _scenario(fake)
    return [_event(s) for s in fake.steps if s.op != "write"]


def _event(s: Step) -> Event:
    if s.op == "rename":
        return ("rename", _norm(s.src), s.path)
    return (s.op, _norm(s.path))


def _local_steps(root: Path, monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    store = LocalStorage(root)
    prefix = f"{root}/"
    events: list[Event] = []
    fds: dict[int, str] = {}

    def rel(path: object) -> str:
        p = os.fspath(path)  # type: ignore[call-overload]
        assert isinstance(p, str)
        return "" if p == str(root) else p.removeprefix(prefix)

    def traced(name: str, record: Callable[..., None]) -> None:
        real = getattr(os, name)

        def call(*args: object, **kwargs: object) -> object:
            result = real(*args, **kwargs)
            record(result, *args)
            return result

        monkeypatch.setattr(os, name, call)

    def on_open(fd: int, path: object, flags: int, *rest: object) -> None:
        fds[fd] = rel(path)
        if flags & os.O_CREAT:
            events.append(("create", _norm(rel(path))))

    def on_fsync(_: object, fd: int) -> None:
        path = fds[fd]
        events.append(("fsync_dir", path) if os.path.isdir(root / path) else ("fsync", _norm(path)))

    traced("open", on_open)
    traced("fsync", on_fsync)
    traced("mkdir", lambda _, path, *r: events.append(("mkdir", rel(path))))
    traced("replace", lambda _, src, dst: events.append(("rename", _norm(rel(src)), rel(dst))))
    traced("unlink", lambda _, path, *r: events.append(("unlink", _norm(rel(path)))))
    _scenario(store)
    monkeypatch.undo()
    return events


def test_local_storage_takes_the_steps_the_power_loss_fake_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = _canonical(_local_steps(tmp_path / "store", monkeypatch))
    fake = _canonical(_fake_steps())
    assert local == fake
    # What the power-cut model rests on, spelled out: data fsynced before its rename, names before they count.
    assert ("fsync_dir", "") in local and ("fsync_dir", "manifests") in local
    assert local.index(("fsync", "tmp:manifests/one.json")) < local.index(
        ("rename", "tmp:manifests/one.json", "manifests/one.json")
    )
