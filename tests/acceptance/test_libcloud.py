"""A second public OnApp client library, unmodified, against a running `vmbackup serve`: apache libcloud's OnApp
compute driver (`libcloud.compute.drivers.onapp`). It lists VMs (reading every VM's ``ip_addresses``, by identifier
from then on), lists templates, and deletes a VM by its identifier with OnApp's `convert_last_backup` and
`destroy_all_backups` parameters, which must keep the VM's backups."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.serve_process import serving
from tests.conftest import ADMIN
from tests.images import MiB, write_image

onapp = pytest.importorskip("libcloud.compute.drivers.onapp", reason="needs apache-libcloud (the test extra)")


def _driver(port: int, login: str, password: str) -> Any:
    # OnApp is https on its default port; vmbackup here is plain http on 127.0.0.1.
    return onapp.OnAppNodeDriver(key=login, secret=password, host="127.0.0.1", port=port, secure=False)


def _post(client: httpx.Client, path: str, root: str, **fields: Any) -> dict[str, Any]:
    r = client.post(path, json={root: fields})
    assert r.status_code == 201, r.text
    return r.json()[root]


def _fleet(client: httpx.Client, image: Path) -> dict[str, Any]:
    """alice's VM on a KVM hypervisor, with a private and a public address and one built backup; bob's VM too."""
    alice = _post(client, "/users.json", "user", login="alice", email="a@example.com", password="alice-password")
    bob = _post(client, "/users.json", "user", login="bob", email="b@example.com", password="bob-password")
    tpl = _post(client, "/templates.json", "image_template", label="Debian 12", operating_system_distro="debian")
    ds = _post(client, "/settings/data_stores.json", "data_store", label="ds")
    hv = _post(client, "/settings/hypervisors.json", "hypervisor", label="kvm-01", ip_address="10.1.0.11")
    # Its backups go to the first start's "Local storage" server (placement takes only servers joined to it).
    _post(
        client, f"/settings/hypervisors/{hv['id']}/backup_server_joins.json", "backup_server_join", backup_server_id=1
    )
    vm = _post(
        client,
        "/virtual_machines.json",
        "virtual_machine",
        label="web",
        hostname="web.example.com",
        user_id=alice["id"],
        template_id=tpl["id"],
        hypervisor_id=hv["id"],
    )
    other = _post(
        client, "/virtual_machines.json", "virtual_machine", label="db", user_id=bob["id"], template_id=tpl["id"]
    )
    disk = _post(
        client,
        f"/virtual_machines/{vm['id']}/disks.json",
        "disk",
        label="root",
        disk_size=4,
        primary=True,
        data_store_id=ds["id"],
        image_path=str(image),
    )
    for address in ("10.0.0.5", "203.0.113.7"):
        _post(
            client, f"/virtual_machines/{vm['identifier']}/ip_addresses.json", "ip_address", address=address, prefix=24
        )
    backup = _post(client, f"/settings/disks/{disk['id']}/backups.json", "backup")
    deadline = time.monotonic() + 60
    while not client.get(f"/backups/{backup['id']}.json").json()["backup"]["built"]:
        assert time.monotonic() < deadline, "the backup was not built"
        time.sleep(0.1)
    return {"alice": alice, "template": tpl, "hypervisor": hv, "vm": vm, "other": other, "backup": backup}


def test_libcloud_lists_and_deletes_vms_and_the_backups_stay(tmp_path: Path) -> None:
    image = write_image(tmp_path / "disk.img", 4 * MiB, seed=3)
    with serving(tmp_path) as served, httpx.Client(base_url=served.base, auth=ADMIN) as client:
        fleet = _fleet(client, image)
        vm = fleet["vm"]

        # as alice: only her VM, its addresses split the way the driver does it (private subnet or not)
        [node] = _driver(served.port, "alice", "alice-password").list_nodes()
        assert (node.id, node.name, node.state) == (vm["identifier"], "web", "delivered")
        assert (node.private_ips, node.public_ips) == (["10.0.0.5"], ["203.0.113.7"])
        extra = node.extra
        assert (extra["id"], extra["hypervisor_id"], extra["template_id"]) == (
            vm["id"],
            fleet["hypervisor"]["id"],
            fleet["template"]["id"],
        )
        assert (extra["total_disk_size"], extra["memory"], extra["cpu_shares"]) == (4, 512, 1)
        assert extra["storage_server_type"] == "other" and extra["support_incremental_backups"] is True

        admin = _driver(served.port, *ADMIN)
        nodes = {n.name: n for n in admin.list_nodes()}
        assert set(nodes) == {"web", "db"} and nodes["db"].private_ips == nodes["db"].public_ips == []
        [image_ref] = admin.list_images()
        assert (image_ref.id, image_ref.name, image_ref.extra["distribution"]) == (
            str(fleet["template"]["id"]),  # libcloud keeps image ids as text
            "Debian 12",
            "debian",
        )

        # deleting by identifier, as the driver does it, with OnApp's keep-the-backups parameters (watched, not changed)
        sent: list[tuple[str, Any, Any]] = []
        request = admin.connection.request

        def watched(action: str, params: Any = None, **kw: Any) -> Any:
            sent.append((action, params, kw.get("method")))
            return request(action, params=params, **kw)

        admin.connection.request = watched
        assert admin.destroy_node(nodes["web"]) is True
        assert sent == [
            (
                f"/virtual_machines/{vm['identifier']}.json",
                {"convert_last_backup": 0, "destroy_all_backups": 0},
                "DELETE",
            )
        ]
        assert client.get(f"/virtual_machines/{vm['identifier']}.json").status_code == 404
        assert client.get(f"/virtual_machines/{vm['id']}.json").status_code == 404
        assert [n.name for n in admin.list_nodes()] == ["db"]
        assert client.get(f"/backups/{fleet['backup']['id']}.json").json()["backup"]["built"] is True
        with httpx.Client(base_url=served.base, auth=("alice", "alice-password")) as as_alice:
            kept = as_alice.get(f"/users/{fleet['alice']['id']}/backups.json").json()
        assert [b["backup"]["id"] for b in kept] == [fleet["backup"]["id"]]
