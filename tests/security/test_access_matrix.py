"""Who gets what, for every route of the app: admin, the owner, another user and an anonymous caller.

The routes come from ``app.routes``, so a new endpoint without a row here fails ``test_every_route_has_a_row``.
Each row names the status each caller must get when acting on the owner's object (alice's unless the row says
otherwise): 2xx, 404 (someone else's object answers like a missing one), 403 (admin only), 401 (no credentials).
Every cell runs on its own copy of one seeded SQLite database, so a delete by one caller never changes another's
answer. Every list a user gets is also checked for objects owned by someone else.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from tests.api_client import Api
from tests.conftest import ADMIN
from tests.integration.api.helpers import make_backup
from vmbackup.api.app import create_app
from vmbackup.config import load_settings
from vmbackup.db.migrate import upgrade
from vmbackup.db.session import make_engine

CALLERS = ("admin", "owner", "other", "anon")


@dataclass(frozen=True)
class Row:
    admin: int
    owner: int
    other: int
    anon: int = 401
    body: Any = None
    params: dict[str, str] = field(default_factory=dict)  # path parameters other than the defaults below
    owner_login: str = "alice"

    def expected(self, caller: str) -> int:
        return int(getattr(self, caller))


ADMIN_ONLY_READ = Row(200, 403, 403)
OWNED_READ = Row(200, 200, 404)
ALL_READ = Row(200, 200, 200)
PUBLIC = Row(200, 200, 200, anon=200)


def _admin_only(code: int, body: Any = None, **params: str) -> Row:
    return Row(code, 403, 403, body=body, params=params)


def _owned(code: int, body: Any = None, **params: str) -> Row:
    return Row(code, code, 404, body=body, params=params)


SCHEDULE = {"schedule": {"period": "days", "duration": 1, "rotation_period": 2}}

MATRIX: dict[tuple[str, str], Row] = {
    # documentation: public by design (it describes the API, holds no data)
    ("GET", "/openapi"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/version"): ALL_READ,
    ("GET", "/profile"): ALL_READ,
    # users
    ("GET", "/users"): ADMIN_ONLY_READ,
    ("POST", "/users"): _admin_only(
        201, {"user": {"login": "zed", "email": "zed@example.com", "password": "zed-pass-1"}}
    ),
    ("GET", "/users/{user_id}"): OWNED_READ,
    ("PUT", "/users/{user_id}"): _owned(204, {"user": {"first_name": "Al"}}),
    # carol owns no VM, so the admin may delete her; users may not delete anyone, themselves included
    ("DELETE", "/users/{user_id}"): Row(204, 403, 403, params={"user_id": "carol"}, owner_login="carol"),
    ("POST", "/users/{user_id}/make_new_api_key"): _owned(200),
    ("GET", "/users/{user_id}/virtual_machines"): OWNED_READ,
    ("GET", "/users/{user_id}/backups"): OWNED_READ,
    # templates: system ones readable by all; a template converted from a backup is its owner's
    ("GET", "/templates"): ALL_READ,
    ("POST", "/templates"): _admin_only(201, {"image_template": {"label": "Debian"}}),
    ("GET", "/templates/{template_id}"): ALL_READ,
    ("GET", "/templates/{template_id}#user"): _owned(200, template_id="user_template"),
    # deleting: a system template is the admin's (users see it: 403), a converted one also its owner's
    ("DELETE", "/templates/{template_id}"): _admin_only(204, template_id="unused_template"),
    ("DELETE", "/templates/{template_id}#user"): _owned(204, template_id="user_template"),
    # data stores, backup servers, zones, presets: admin only
    ("GET", "/settings/data_stores"): ADMIN_ONLY_READ,
    ("POST", "/settings/data_stores"): _admin_only(201, {"data_store": {"label": "ds9"}}),
    ("GET", "/settings/data_stores/{id}"): _admin_only(200, id="data_store_2"),
    ("PUT", "/settings/data_stores/{id}"): _admin_only(204, {"data_store": {"label": "ds8"}}, id="data_store_2"),
    ("DELETE", "/settings/data_stores/{id}"): _admin_only(204, id="data_store_2"),
    ("GET", "/settings/backup_servers"): ADMIN_ONLY_READ,
    ("POST", "/settings/backup_servers"): _admin_only(
        201, {"backup_server": {"label": "bs9", "storage_path": "STORE"}}
    ),
    ("GET", "/settings/backup_servers/{id}"): _admin_only(200, id="server_2"),
    ("PUT", "/settings/backup_servers/{id}"): _admin_only(204, {"backup_server": {"label": "bs8"}}, id="server_2"),
    ("DELETE", "/settings/backup_servers/{id}"): _admin_only(204, id="server_2"),
    ("GET", "/settings/backup_servers/{server_id}/backups_search"): _admin_only(200, server_id="server_1"),
    ("GET", "/settings/backup_server_zones"): ADMIN_ONLY_READ,
    ("POST", "/settings/backup_server_zones"): _admin_only(201, {"backup_server_group": {"label": "z9"}}),
    ("GET", "/settings/backup_server_zones/{id}"): _admin_only(200, id="zone"),
    ("PUT", "/settings/backup_server_zones/{id}"): _admin_only(
        204, {"backup_server_group": {"label": "z8"}}, id="zone"
    ),
    ("DELETE", "/settings/backup_server_zones/{id}"): _admin_only(204, id="zone"),
    ("GET", "/settings/backup_server_zones/{zone_id}/backup_servers"): _admin_only(200),
    ("POST", "/settings/backup_server_zones/{zone_id}/backup_servers/{server_id}/attach"): _admin_only(200),
    ("POST", "/settings/backup_server_zones/{zone_id}/backup_servers/{server_id}/detach"): _admin_only(200),
    ("GET", "/settings/autobackup_presets"): ADMIN_ONLY_READ,
    ("POST", "/settings/autobackup_presets"): _admin_only(201, {"autobackup_template": {"period": "weeks"}}),
    ("GET", "/settings/autobackup_presets/{id}"): _admin_only(200, id="preset"),
    ("PUT", "/settings/autobackup_presets/{id}"): _admin_only(
        204, {"autobackup_template": {"duration": 3}}, id="preset"
    ),
    ("DELETE", "/settings/autobackup_presets/{id}"): _admin_only(204, id="preset"),
    # virtual machines: owners read, admins manage
    ("GET", "/virtual_machines"): ALL_READ,
    ("POST", "/virtual_machines"): _admin_only(
        201, {"virtual_machine": {"label": "new", "user_id": "ALICE", "template_id": "TEMPLATE"}}
    ),
    ("GET", "/virtual_machines/{vm_id}"): OWNED_READ,
    ("PUT", "/virtual_machines/{vm_id}"): _admin_only(204, {"virtual_machine": {"label": "renamed"}}),
    ("DELETE", "/virtual_machines/{vm_id}"): _admin_only(204),
    # disks: owners read, admins manage (image paths are the admin's)
    ("GET", "/virtual_machines/{vm_id}/disks"): OWNED_READ,
    ("POST", "/virtual_machines/{vm_id}/disks"): _admin_only(
        201, {"disk": {"label": "d2", "disk_size": 1, "data_store_id": "DATA_STORE"}}
    ),
    ("GET", "/settings/disks"): ALL_READ,
    ("GET", "/settings/disks/{disk_id}"): OWNED_READ,
    ("PUT", "/settings/disks/{disk_id}"): _admin_only(204, {"disk": {"label": "data"}}),
    ("DELETE", "/settings/disks/{disk_id}"): _admin_only(204),
    # backups: the owner's to list, take, note, restore, convert and delete
    ("GET", "/virtual_machines/{vm_id}/backups"): OWNED_READ,
    ("POST", "/virtual_machines/{vm_id}/backups"): _owned(201),
    ("GET", "/virtual_machines/{vm_id}/backups/images"): OWNED_READ,
    ("GET", "/virtual_machines/{vm_id}/backups/files"): OWNED_READ,
    ("GET", "/settings/disks/{disk_id}/backups"): OWNED_READ,
    ("POST", "/settings/disks/{disk_id}/backups"): _owned(201, {"backup": {"note": "n"}}),
    ("GET", "/virtual_machines/{vm_id}/disks/{disk_id}/backups"): OWNED_READ,
    ("GET", "/backups/{backup_id}"): OWNED_READ,
    ("PUT", "/backups/{backup_id}"): _owned(204, {"backup": {"note": "mine"}}),
    ("DELETE", "/backups/{backup_id}"): _owned(204),
    ("PUT", "/virtual_machines/{vm_id}/backups/{backup_id}"): _owned(204, {"backup": {"note": "mine"}}),
    ("POST", "/backups/{backup_id}/restore"): _owned(201),
    ("POST", "/backups/{backup_id}/convert"): _owned(201, {"backup": {"label": "from backup"}}),
    # transactions
    ("GET", "/transactions"): ALL_READ,
    ("GET", "/transactions/page/{page}"): ALL_READ,
    ("GET", "/transactions/per_page/{per_page}"): ALL_READ,
    ("GET", "/virtual_machines/{vm_id}/transactions"): OWNED_READ,
    ("GET", "/transactions/{tx_id}"): OWNED_READ,
    # schedules and auto-backups
    ("GET", "/settings/schedules"): ALL_READ,
    ("POST", "/settings/schedules"): _owned(
        201, {"schedule": {**SCHEDULE["schedule"], "target_type": "Disk", "target_id": "DISK"}}
    ),
    ("GET", "/settings/disks/{disk_id}/schedules"): OWNED_READ,
    ("POST", "/settings/disks/{disk_id}/schedules"): _owned(201, SCHEDULE),
    ("GET", "/virtual_machines/{vm_id}/schedules"): OWNED_READ,
    ("POST", "/virtual_machines/{vm_id}/schedules"): _owned(201, SCHEDULE),
    ("GET", "/settings/schedules/{schedule_id}"): OWNED_READ,
    ("PUT", "/settings/schedules/{schedule_id}"): _owned(204, {"schedule": {"duration": 2}}),
    ("DELETE", "/settings/schedules/{schedule_id}"): _owned(204),
    ("GET", "/settings/schedules/{schedule_id}/schedule_logs"): OWNED_READ,
    ("POST", "/virtual_machines/{vm_id}/autobackup_enable"): _owned(200),
    ("POST", "/virtual_machines/{vm_id}/autobackup_disable"): _owned(200),
    ("POST", "/settings/disks/{disk_id}/autobackup_enable"): _owned(200),
    ("POST", "/settings/disks/{disk_id}/autobackup_disable"): _owned(200),
    # the fleet: users never see hypervisors, their zones or joins (issue 11)
    ("GET", "/settings/hypervisors"): ADMIN_ONLY_READ,
    ("POST", "/settings/hypervisors"): _admin_only(201, {"hypervisor": {"label": "hv9", "hypervisor_type": "xen"}}),
    ("GET", "/settings/hypervisors/{hypervisor_id}"): _admin_only(200, hypervisor_id="hypervisor"),
    ("PUT", "/settings/hypervisors/{hypervisor_id}"): _admin_only(
        204, {"hypervisor": {"label": "hv8"}}, hypervisor_id="hypervisor"
    ),
    ("DELETE", "/settings/hypervisors/{hypervisor_id}"): _admin_only(204, hypervisor_id="hypervisor"),
    ("GET", "/settings/hypervisors/{hypervisor_id}/backup_server_joins"): _admin_only(200, hypervisor_id="hypervisor"),
    ("POST", "/settings/hypervisors/{hypervisor_id}/backup_server_joins"): _admin_only(
        201, {"backup_server_join": {"backup_server_id": "SERVER_2"}}, hypervisor_id="hypervisor"
    ),
    ("DELETE", "/settings/hypervisors/{hypervisor_id}/backup_server_joins/{join_id}"): _admin_only(
        204, hypervisor_id="hypervisor", join_id="hv_join"
    ),
    ("GET", "/settings/hypervisor_zones"): ADMIN_ONLY_READ,
    ("POST", "/settings/hypervisor_zones"): _admin_only(201, {"hypervisor_group": {"label": "hz9"}}),
    ("GET", "/settings/hypervisor_zones/{hypervisor_zone_id}"): _admin_only(200, hypervisor_zone_id="hv_zone"),
    ("PUT", "/settings/hypervisor_zones/{hypervisor_zone_id}"): _admin_only(
        204, {"hypervisor_group": {"label": "hz8"}}, hypervisor_zone_id="hv_zone"
    ),
    ("DELETE", "/settings/hypervisor_zones/{hypervisor_zone_id}"): _admin_only(204, hypervisor_zone_id="hv_zone"),
    ("GET", "/settings/hypervisor_zones/{hypervisor_zone_id}/backup_server_joins"): _admin_only(
        200, hypervisor_zone_id="hv_zone"
    ),
    ("POST", "/settings/hypervisor_zones/{hypervisor_zone_id}/backup_server_joins"): _admin_only(
        201, {"backup_server_join": {"backup_server_id": "SERVER_2"}}, hypervisor_zone_id="hv_zone"
    ),
    ("DELETE", "/settings/hypervisor_zones/{hypervisor_zone_id}/backup_server_joins/{join_id}"): _admin_only(
        204, hypervisor_zone_id="hv_zone", join_id="zone_join"
    ),
    # a VM's status and addresses: the owner reads, admins assign
    ("GET", "/virtual_machines/{vm_id}/status"): OWNED_READ,
    ("GET", "/virtual_machines/{vm_id}/ip_addresses"): OWNED_READ,
    ("POST", "/virtual_machines/{vm_id}/ip_addresses"): _admin_only(
        201, {"ip_address": {"address": "192.0.2.50", "prefix": 24}}
    ),
    ("DELETE", "/virtual_machines/{vm_id}/ip_addresses/{ip_id}"): _admin_only(204),
    # a VM by its identifier: the same answers as by its number; someone else's, or nobody's, is a 404
    ("GET", "/virtual_machines/{vm_id}#identifier"): Row(200, 200, 404, params={"vm_id": "vm_identifier"}),
    ("PUT", "/virtual_machines/{vm_id}#identifier"): _admin_only(
        204, {"virtual_machine": {"label": "renamed"}}, vm_id="vm_identifier"
    ),
    ("DELETE", "/virtual_machines/{vm_id}#identifier"): _admin_only(204, vm_id="vm_identifier"),
    ("GET", "/virtual_machines/{vm_id}/backups#identifier"): Row(200, 200, 404, params={"vm_id": "vm_identifier"}),
    ("GET", "/virtual_machines/{vm_id}/disks#identifier"): Row(200, 200, 404, params={"vm_id": "vm_identifier"}),
    ("GET", "/virtual_machines/{vm_id}/status#identifier"): Row(200, 200, 404, params={"vm_id": "vm_identifier"}),
    ("GET", "/virtual_machines/{vm_id}/transactions#identifier"): Row(200, 200, 404, params={"vm_id": "vm_identifier"}),
    ("GET", "/virtual_machines/{vm_id}/ip_addresses#identifier"): Row(200, 200, 404, params={"vm_id": "vm_identifier"}),
    ("POST", "/virtual_machines/{vm_id}/backups#identifier"): _owned(201, vm_id="vm_identifier"),
    ("GET", "/virtual_machines/{vm_id}#unknown"): Row(404, 404, 404, params={"vm_id": "unknown_identifier"}),
    ("GET", "/virtual_machines/{vm_id}/backups#unknown"): Row(404, 404, 404, params={"vm_id": "unknown_identifier"}),
}

PASSWORDS = {"alice": "alice-password", "bob": "bob-password", "carol": "carol-password"}


def app_routes(app: Any) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves, included routers flattened as FastAPI itself does."""
    out = set()
    for route in iter_route_contexts(app.routes):
        out |= {(m, str(route.path)) for m in route.methods or {"GET"} if m != "HEAD"}
    return out


def _settings(tmp: Path, db: Path) -> Any:
    return load_settings(
        {},
        data_dir=str(tmp / "data"),
        database_url=f"sqlite:///{db}",
        admin_login=ADMIN[0],
        admin_password=ADMIN[1],
        password_memory_kib=19456,
        password_time_cost=2,
        worker="external",
    )


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One database holding alice's and bob's objects (and carol, who owns nothing), built once per module."""
    tmp = tmp_path_factory.mktemp("matrix")
    db = tmp / "seed.db"
    engine = make_engine(f"sqlite:///{db}")
    upgrade(engine)
    engine.dispose()
    app = create_app(_settings(tmp, db))
    ids: dict[str, Any] = {}
    with TestClient(app) as client:
        api = Api(client)
        for login in ("alice", "bob", "carol"):
            ids[login] = api.user(login)["id"]
        ids["template"] = api.template()["id"]
        ids["unused_template"] = api.template(label="Unused")["id"]
        ids["data_store_1"] = api.data_store()["id"]
        ids["data_store_2"] = api.data_store(label="spare")["id"]
        ids["server_1"] = 1  # "Local storage", registered on first start; holds the backups below
        store = tmp / "server2"
        # Disabled, so placement (which spreads takes over servers) puts no backup on it and it can be deleted.
        ids["server_2"] = api.create(
            "/settings/backup_servers.json", "backup_server", label="spare", storage_path=str(store), enabled=False
        )["id"]
        ids["zone"] = api.create("/settings/backup_server_zones.json", "backup_server_group", label="z1")["id"]
        ids["preset"] = api.get("/settings/autobackup_presets.json").json()[0]["autobackup_template"]["id"]
        ids["hv_zone"] = api.create("/settings/hypervisor_zones.json", "hypervisor_group", label="hz1")["id"]
        ids["hypervisor"] = api.create("/settings/hypervisors.json", "hypervisor", label="hv1")["id"]
        ids["hv_join"] = api.create(
            f"/settings/hypervisors/{ids['hypervisor']}/backup_server_joins.json",
            "backup_server_join",
            backup_server_id=1,
        )["id"]
        ids["zone_join"] = api.create(
            f"/settings/hypervisor_zones/{ids['hv_zone']}/backup_server_joins.json",
            "backup_server_join",
            backup_server_id=1,
        )["id"]
        for login in ("alice", "bob"):
            user = api.as_(login, PASSWORDS[login])
            vm = api.vm(ids[login], ids["template"], label=f"{login}-vm")
            disk = api.disk(vm["id"], ids["data_store_1"], image_path=f"/nonexistent/{login}.img")
            backup = make_backup(app, disk_id=disk["id"])
            spare = make_backup(app, disk_id=disk["id"])
            template = user.post(f"/backups/{spare}/convert.json", {"backup": {"label": f"{login} tpl"}})
            assert template.status_code == 201, template.text
            take = user.post(f"/settings/disks/{disk['id']}/backups.json")
            assert take.status_code == 201, take.text
            schedule = user.post(f"/settings/disks/{disk['id']}/schedules.json", SCHEDULE)
            assert schedule.status_code == 201, schedule.text
            tx = user.get("/transactions.json").json()[0]["transaction"]["id"]
            ip = api.create(
                f"/virtual_machines/{vm['id']}/ip_addresses.json",
                "ip_address",
                address=f"198.51.100.{len(ids)}",
                prefix=24,
            )
            ids[f"{login}_objects"] = {
                "vm": vm["id"],
                "identifier": vm["identifier"],
                "ip": ip["id"],
                "disk": disk["id"],
                "backup": backup,
                "template": template.json()["image_template"]["id"],
                "schedule": schedule.json()["schedule"]["id"],
                "tx": tx,
            }
        # The take above locked alice's VM; unlock it so the rows about restores and deletes are about access.
        # The conversions are left as if a worker had finished them (no worker runs here).
        with app.state.sessions() as s:
            from vmbackup.db.models import Backup, ImageTemplate, VirtualMachine

            for vm_row in s.query(VirtualMachine):
                vm_row.locked = False
            for b in s.query(Backup):
                b.locked = False
            for t in s.query(ImageTemplate).filter(ImageTemplate.state == "pending"):
                t.state = "active"
            s.commit()
    app.state.engine.dispose()
    return db, ids


def _values(ids: dict[str, Any], owner: str) -> dict[str, str]:
    """Path parameter values: the owner's objects by default, and every seeded object by its name."""
    mine = ids[f"{owner}_objects"]
    return {
        "user_id": str(ids[owner]),
        "vm_id": str(mine["vm"]),
        "disk_id": str(mine["disk"]),
        "backup_id": str(mine["backup"]),
        "schedule_id": str(mine["schedule"]),
        "tx_id": str(mine["tx"]),
        "template_id": str(ids["template"]),
        "user_template": str(mine["template"]),
        "zone_id": str(ids["zone"]),
        "server_id": str(ids["server_2"]),
        "page": "1",
        "per_page": "5",
        "ip_id": str(mine["ip"]),
        "vm_identifier": mine["identifier"],
        "unknown_identifier": "zzzzzzzzzzzzzz",
        **{k: str(v) for k, v in ids.items() if isinstance(v, int)},
    }


def _fill(value: Any, ids: dict[str, Any], tmp: Path) -> Any:
    words = {
        "ALICE": ids["alice"],
        "TEMPLATE": ids["template"],
        "DATA_STORE": ids["data_store_1"],
        "DISK": ids["alice_objects"]["disk"],
        "STORE": str(tmp / "store9"),
        "SERVER_2": ids["server_2"],
    }
    if isinstance(value, dict):
        return {k: _fill(v, ids, tmp) for k, v in value.items()}
    return words.get(value, value) if isinstance(value, str) else value


@pytest.fixture
def fresh(seeded: tuple[Path, dict[str, Any]], tmp_path: Path) -> Iterator[Any]:
    """A factory of clients, each on a new copy of the seeded database."""
    db, _ = seeded
    apps = []

    def make() -> TestClient:
        copy = tmp_path / f"copy{len(apps)}.db"
        shutil.copy(db, copy)
        app = create_app(_settings(tmp_path, copy))
        apps.append(app)
        return TestClient(app)

    yield make
    for app in apps:
        app.state.engine.dispose()


def _call(client: TestClient, caller: str, row: Row, method: str, url: str, body: Any) -> Any:
    auth = {
        "admin": ADMIN,
        "owner": (row.owner_login, PASSWORDS[row.owner_login]),
        "other": ("bob", PASSWORDS["bob"]),
        "anon": None,
    }[caller]
    return client.request(method, url, json=body, auth=auth)


OWNED_KINDS = {"virtual_machine": "vm", "disk": "disk", "backup": "backup", "schedule": "schedule", "transaction": "tx"}


def _leaks(doc: Any, caller_login: str, ids: dict[str, Any]) -> list[str]:
    """Objects in a list answer that belong to someone other than the caller."""
    others = [login for login in ("alice", "bob") if login != caller_login]
    foreign = {(kind, ids[f"{o}_objects"][kind]) for o in others for kind in OWNED_KINDS.values()}
    foreign |= {("image_template", ids[f"{o}_objects"]["template"]) for o in others}
    found = []
    for item in doc if isinstance(doc, list) else []:
        ((root, obj),) = item.items()
        kind = OWNED_KINDS.get(root, root)
        if (kind, obj.get("id")) in foreign or obj.get("user_id") in {ids[o] for o in others}:
            found.append(f"{root} {obj.get('id')}")
    return found


def test_every_route_has_a_row(seeded, tmp_path):
    db, _ = seeded
    shutil.copy(db, tmp_path / "x.db")
    app = create_app(_settings(tmp_path, tmp_path / "x.db"))
    try:
        routes = app_routes(app)
    finally:
        app.state.engine.dispose()
    rows = {(m, p.split("#")[0]) for m, p in MATRIX}
    assert routes - rows == set(), "routes without an access expectation"
    assert rows - routes == set(), "rows for routes that no longer exist"


@pytest.mark.parametrize("key", sorted(MATRIX), ids=lambda k: f"{k[0]} {k[1]}")
def test_access(seeded, fresh, tmp_path, key, record_property):
    method, template = key
    row = MATRIX[key]
    _, ids = seeded
    values = _values(ids, "alice")
    path = template.split("#")[0]
    for name in [p.strip("{}") for p in path.split("/") if p.startswith("{")]:
        path = path.replace("{" + name + "}", values[row.params.get(name, name)])
    body = _fill(row.body, ids, tmp_path)
    got = {}
    # One database for the callers expected to fail and the owner, a fresh one for the admin: each success
    # then acts on untouched objects.
    shared = fresh()
    for caller in CALLERS:
        client = fresh() if caller == "admin" else shared
        docs = path.startswith(("/docs", "/openapi"))
        r = _call(client, caller, row, method, path if docs else path + ".json", body)
        got[caller] = r.status_code
        if docs:
            continue
        if r.status_code >= 400:
            assert r.json().keys() == {"errors"}, r.text
        if method == "GET" and r.status_code == 200 and caller in ("owner", "other"):
            login = row.owner_login if caller == "owner" else "bob"
            assert _leaks(r.json(), login, ids) == [], f"{caller} sees others' objects at {path}"
    record_property("cells", len(CALLERS))
    assert got == {c: row.expected(c) for c in CALLERS}
