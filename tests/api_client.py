"""A thin API client for tests, with helpers that build inventory."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import ADMIN


class Api:
    """A thin client for tests: admin by default, JSON unless told, and helpers that build inventory."""

    def __init__(self, client: TestClient, auth: tuple[str, str] = ADMIN) -> None:
        self.client = client
        self.auth = auth

    def as_(self, login: str, password: str) -> Api:
        return Api(self.client, (login, password))

    def request(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        kw.setdefault("auth", self.auth)
        if body is not None:
            kw["json"] = body
        return self.client.request(method, path, **kw)

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("POST", path, body, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("PUT", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)

    def create(self, path: str, root: str, **fields: Any) -> dict[str, Any]:
        r = self.post(path, {root: fields})
        assert r.status_code == 201, r.text
        return r.json()[root]

    # inventory builders
    def user(self, login: str = "alice", **kw: Any) -> dict[str, Any]:
        fields = {"login": login, "email": f"{login}@example.com", "password": f"{login}-password", **kw}
        return self.create("/users.json", "user", **fields)

    def template(self, **kw: Any) -> dict[str, Any]:
        fields = {
            "label": "Ubuntu 22.04",
            "operating_system": "linux",
            "operating_system_distro": "ubuntu",
            "min_disk_size": 5,
            "min_memory_size": 384,
            "allowed_hot_migrate": True,
            **kw,
        }
        return self.create("/templates.json", "image_template", **fields)

    def data_store(self, **kw: Any) -> dict[str, Any]:
        return self.create(
            "/settings/data_stores.json", "data_store", **{"label": "ds1", "data_store_type": "lvm", **kw}
        )

    def vm(self, user_id: int, template_id: int, **kw: Any) -> dict[str, Any]:
        fields = {
            "label": "web1",
            "hostname": "web1.example.com",
            "user_id": user_id,
            "template_id": template_id,
            "memory": 1024,
            "cpus": 2,
            **kw,
        }
        return self.create("/virtual_machines.json", "virtual_machine", **fields)

    def disk(self, vm_id: int, data_store_id: int, **kw: Any) -> dict[str, Any]:
        fields = {"label": "root", "disk_size": 5, "primary": True, "data_store_id": data_store_id, **kw}
        return self.create(f"/virtual_machines/{vm_id}/disks.json", "disk", **fields)
