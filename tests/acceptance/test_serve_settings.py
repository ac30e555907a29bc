"""Settings reach `vmbackup serve` through the real process environment, as the README shows them."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.acceptance.serve_process import serving
from tests.api_client import Api
from tests.conftest import ADMIN


@pytest.mark.parametrize("separator", [",", ":"])
def test_serve_starts_with_image_roots_in_the_environment_and_enforces_them(tmp_path: Path, separator: str) -> None:
    images, other = tmp_path / "images", tmp_path / "other"
    images.mkdir()
    other.mkdir()
    (images / "a.img").write_bytes(b"\0" * 4096)
    (other / "b.img").write_bytes(b"\0" * 4096)
    (tmp_path / "outside.img").write_bytes(b"\0" * 4096)
    roots = f"{images}{separator}{other}"
    with serving(tmp_path, {"VMBACKUP_IMAGE_ROOTS": roots}) as served, httpx.Client(base_url=served.base) as client:
        api = Api(client, ADMIN)  # type: ignore[arg-type]
        vm = api.vm(api.user("alice")["id"], api.template()["id"])
        ds = api.data_store()["id"]
        path = f"/virtual_machines/{vm['id']}/disks.json"

        def disk(image: Path) -> httpx.Response:
            fields = {"label": "d", "disk_size": 1, "data_store_id": ds, "image_path": str(image)}
            return api.post(path, {"disk": fields})  # type: ignore[no-any-return]

        for allowed in (images / "a.img", other / "b.img"):
            r = disk(allowed)
            assert r.status_code == 201, r.text
        r = disk(tmp_path / "outside.img")
        assert r.status_code == 422, r.text
        assert "allowed image root" in r.text
