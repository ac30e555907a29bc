"""The data directory (SQLite database) on a small tmpfs that fills up while the service runs.

Proves: a write that finds no space answers 507 with the reason in OnApp form (JSON and XML) and is logged, not a
bare 500; reads go on working; nothing committed before is lost; once space is freed, writes work again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.failure.conftest import Service, make_settings, on_small_tmpfs, running_service

SIZE = "8m"
REASON = "The service's data directory is full (No space left on device): nothing was changed."


@pytest.fixture
def small_data_dir(tmp_path: Path) -> Iterator[Service]:
    # The mount holds the SQLite file itself.
    settings = make_settings(tmp_path, worker="external")
    with on_small_tmpfs(settings.data_dir, SIZE), running_service(settings) as s:
        yield s


def _fill(directory: Path) -> Path:
    """Take every free block of the file system holding ``directory``."""
    filler = directory / "filler"
    block = b"\xff" * (64 * 1024)
    with open(filler, "wb", buffering=0) as f:
        for size in (len(block), 4096, 512, 1):
            try:
                while True:
                    f.write(block[:size])
            except OSError:
                pass
    return filler


def _labels(api: Any) -> list[str]:
    r = api.get("/settings/data_stores.json")
    assert r.status_code == 200, r.text
    return [d["data_store"]["label"] for d in r.json()]


def test_a_full_data_dir_refuses_writes_with_a_reason_and_loses_nothing(
    small_data_dir: Service, caplog: pytest.LogCaptureFixture
) -> None:
    s, api = small_data_dir, small_data_dir.api
    kept = [api.data_store(label=f"before-{i}")["label"] for i in range(3)]
    filler = _fill(s.settings.data_dir)

    caplog.set_level(logging.ERROR, logger="vmbackup")
    # The WAL may still have room for a few small commits; a bounded number of writes must meet the full disk.
    for i in range(2000):
        r = api.post("/settings/data_stores.json", {"data_store": {"label": f"during-{i}-" + "x" * 200}})
        if r.status_code != 201:
            break
        kept.append(r.json()["data_store"]["label"])
    else:
        pytest.fail("2000 writes fitted on a full file system")
    assert r.status_code == 507, r.text
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert r.json() == {"errors": [REASON]}
    r = api.post(
        "/settings/data_stores.xml",
        content=b"<data_store><label>in xml</label></data_store>",
        headers={"Content-Type": "application/xml"},
    )
    assert r.status_code == 507, r.text
    assert f"<error>{REASON}</error>" in r.text
    logged = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert any("database or disk is full" in rec.getMessage() and REASON in rec.getMessage() for rec in logged), [
        rec.getMessage() for rec in logged
    ]

    # Reads go on; what was committed is all there, the refused writes are not.
    assert _labels(api) == kept

    filler.unlink()
    assert api.data_store(label="after")["label"] == "after"
    assert _labels(api) == [*kept, "after"]
