"""A convert's scratch image goes to the data directory's scratch folder, never into a backup server's storage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.images import MiB, write_image
from tests.integration.api.helpers import wait_idle
from vmbackup.engine import Engine


def test_convert_writes_its_scratch_image_outside_the_storage(
    api: Any, settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vm = api.vm(api.user("alice")["id"], api.template()["id"])
    image = write_image(tmp_path / "root.img", 2 * MiB, seed=4)
    disk = api.disk(vm["id"], api.data_store()["id"], image_path=str(image))
    backup = api.post(f"/settings/disks/{disk['id']}/backups.json").json()["backup"]
    wait_idle(api)
    sources: list[str] = []
    take = Engine.take_normal

    def recording(self: Engine, backup_id: str, source: str, *a: Any, **kw: Any) -> Any:
        sources.append(source)
        return take(self, backup_id, source, *a, **kw)

    monkeypatch.setattr(Engine, "take_normal", recording)
    r = api.post(f"/backups/{backup['id']}/convert.json", {"backup": {"label": "golden"}})
    assert r.status_code == 201, r.text
    assert all(t["status"] == "complete" for t in wait_idle(api))
    scratch = settings.data_dir.resolve() / "scratch"
    assert len(sources) == 1 and Path(sources[0]).parent == scratch
    assert not list(scratch.iterdir())  # removed once archived
