"""Every GET answers the same values in JSON and in XML, text and datetimes included, in the caller's time zone.

The two forms are rendered by different code in api/formats.py; nothing compared them, so a review could plant
"XML text not escaped" and "XML datetimes ignore the user's time zone" without a test noticing. Here every GET
route of the OpenAPI document is read in both forms by users whose time zone is not UTC, over objects whose text
holds markup characters, and the XML is read back with a real XML parser (independent of the service's own).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from xml.etree import ElementTree
from zoneinfo import ZoneInfo

import pytest

from tests.integration.api.helpers import make_backup
from vmbackup.api.app import create_app
from vmbackup.config import Settings

# Markup and quotes in every text a client can set, so escaping mistakes either break the XML or change the text.
NASTY = "<b>&amp; \"x\" 'y' & < > ]]>"  # 25 characters: fits the shortest text columns (32)
ADMIN_TZ = "Asia/Kathmandu"  # +05:45 all year: never mistaken for UTC or a whole-hour offset
USER_TZ = "America/St_Johns"  # -03:30 / -02:30: daylight saving time too


class XmlDatetime(str):
    """The text of a ``type="datetime"`` element: compared as text with the JSON value, and checked for its zone."""


def from_xml(el: ElementTree.Element) -> Any:
    """A typed Rails-style XML element as the JSON value it must equal."""
    if el.get("nil") == "true":
        return None
    kind, text = el.get("type"), el.text or ""
    if kind == "array":
        # Items that are hashes are OnApp roots, wrapped in their name in JSON (`[{"ip_address": {...}}]`) and
        # written once in XML (`<ip_addresses type="array"><ip_address><address>...`), as Rails does.
        return [{child.tag: from_xml(child)} if len(child) else from_xml(child) for child in el]
    if kind == "integer":
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "boolean":
        return {"true": True, "false": False}[text]
    if kind == "datetime":
        return XmlDatetime(text)
    assert kind is None, f"unknown type {kind!r} on <{el.tag}>"
    if len(el) or (text.isspace() and "\n" in text):
        # A hash: its children on lines of their own, so an empty one holds only the line break and indent (text
        # itself never starts with a line break: input is stripped).
        return {child.tag: from_xml(child) for child in el}
    return text


def as_json_shape(root: ElementTree.Element) -> Any:
    """The whole XML document in the JSON answer's shape (api/formats.py: lists of wrapped items, a bare hash)."""
    value = from_xml(root)
    if root.get("type") == "array":
        return [{child.tag: from_xml(child)} for child in root]
    return value if root.tag == "hash" else {root.tag: value}


def datetimes(value: Any) -> list[XmlDatetime]:
    if isinstance(value, XmlDatetime):
        return [value]
    if isinstance(value, dict):
        return [d for v in value.values() for d in datetimes(v)]
    if isinstance(value, list):
        return [d for v in value for d in datetimes(v)]
    return []


def texts(value: Any) -> list[str]:
    if isinstance(value, str) and not isinstance(value, XmlDatetime):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in texts(v)]
    if isinstance(value, list):
        return [t for v in value for t in texts(v)]
    return []


@pytest.fixture
def app(settings: Settings) -> Iterator[Any]:
    """Nothing changes between the JSON and the XML read: no worker runs the queued transactions, no scheduler or
    integrity check fires during the test."""
    quiet = settings.model_copy(update={"worker": "external", "scheduler_seconds": 3600, "verify_interval_hours": 0})
    application = create_app(quiet)
    yield application
    application.state.engine.dispose()


@pytest.fixture
def scene(app, api):
    """Two users in non-UTC zones, and one of every object, each text set to NASTY where a client can set it."""
    api.user("zadmin", role="admin", time_zone=ADMIN_TZ, first_name=NASTY, last_name=NASTY)
    alice = api.user("alice", time_zone=USER_TZ, first_name=NASTY)
    tpl = api.template(label=NASTY, operating_system_distro=NASTY, version=NASTY, file_name=NASTY)
    ds = api.data_store(label=NASTY)
    zone = api.create("/settings/backup_server_zones.json", "backup_server_group", label=NASTY)
    storage = str(app.state.settings.data_dir / "second-storage")
    api.create("/settings/backup_servers.json", "backup_server", label=NASTY, ip_address=NASTY, storage_path=storage)
    hv_zone = api.create("/settings/hypervisor_zones.json", "hypervisor_group", label=NASTY)
    hv = api.create(
        "/settings/hypervisors.json", "hypervisor", label=NASTY, ip_address=NASTY, hypervisor_group_id=hv_zone["id"]
    )
    for kind, target in (("hypervisors", hv), ("hypervisor_zones", hv_zone)):
        api.create(
            f"/settings/{kind}/{target['id']}/backup_server_joins.json", "backup_server_join", backup_server_id=1
        )
    vm = api.vm(alice["id"], tpl["id"], label=NASTY, hostname=NASTY, hypervisor_id=hv["id"])
    api.create(f"/virtual_machines/{vm['id']}/ip_addresses.json", "ip_address", address="10.0.0.5", prefix=24)
    disk = api.disk(
        vm["id"], ds["id"], label=NASTY, mount_point=NASTY, file_system=NASTY, image_path="/nonexistent/agree.img"
    )
    make_backup(app, disk_id=disk["id"], note=NASTY)
    make_backup(app, vm_id=vm["id"], note=NASTY)
    # Queued, never run (no worker picks them up in time to matter): transactions to list, with their datetimes.
    assert api.post(f"/settings/disks/{disk['id']}/backups.json", {"backup": {"note": NASTY}}).status_code == 201
    assert api.post(f"/settings/disks/{disk['id']}/autobackup_enable.json").status_code in (200, 201, 204)
    ids = {"user_id": alice["id"], "vm_id": vm["id"], "disk_id": disk["id"], "zone_id": zone["id"]}
    return {"admin": api.as_("zadmin", "zadmin-password"), "alice": api.as_("alice", "alice-password"), "ids": ids}


def _get_paths(api: Any, ids: dict[str, int]) -> list[str]:
    doc = api.get("/openapi.json").json()
    paths = []
    for path, item in doc["paths"].items():
        if "get" not in item or path.startswith(("/openapi", "/docs")):
            continue
        for name in ("user_id", "vm_id", "disk_id", "zone_id"):
            path = path.replace("{" + name + "}", str(ids[name]))
        paths.append(re.sub(r"\{[^}]+\}", "1", path))  # the rest: the first of each (page 1, backup 1...)
    return paths


def _compare(client: Any, path: str, tz: str) -> tuple[int, int]:
    query = "?detailed" if "transactions" in path else ""
    j = client.get(f"{path}.json{query}")
    x = client.get(f"{path}.xml{query}")
    assert j.status_code == x.status_code, path
    if j.status_code != 200:
        return 0, 0
    assert x.headers["content-type"] == "application/xml; charset=utf-8"
    root = ElementTree.fromstring(x.content)  # raises if the document is not well-formed
    from_xml_doc = as_json_shape(root)
    assert from_xml_doc == j.json(), path  # every field: same text, numbers, booleans, nulls and datetime text
    stamps = datetimes(from_xml_doc)
    zone = ZoneInfo(tz)
    for stamp in stamps:
        at = datetime.fromisoformat(stamp)
        assert at.utcoffset() == zone.utcoffset(at), f"{path}: {stamp} is not in {tz}"
    return len(stamps), sum(NASTY in t for t in texts(from_xml_doc))


def test_every_get_answers_the_same_in_json_and_xml_in_the_users_time_zone(api, scene):
    paths = _get_paths(api, scene["ids"])
    assert len(paths) >= 30
    stamps = nasty = 0
    for path in paths:
        s, n = _compare(scene["admin"], path, ADMIN_TZ)
        stamps, nasty = stamps + s, nasty + n
    # Enough was compared to mean something: datetimes and the markup-laden texts of every kind of object.
    assert stamps >= 50 and nasty >= 30, (stamps, nasty)


def test_a_users_own_objects_agree_in_json_and_xml_in_their_time_zone(api, scene):
    alice, ids = scene["alice"], scene["ids"]
    compared = 0
    for path in (
        "/profile",
        f"/users/{ids['user_id']}",
        "/virtual_machines",
        f"/virtual_machines/{ids['vm_id']}",
        f"/virtual_machines/{ids['vm_id']}/backups",
        f"/virtual_machines/{ids['vm_id']}/disks",
        f"/settings/disks/{ids['disk_id']}/backups",
        f"/users/{ids['user_id']}/backups",
        "/transactions",
        "/settings/schedules",
    ):
        stamps, nasty = _compare(alice, path, USER_TZ)
        assert stamps and (nasty or path in ("/transactions", "/settings/schedules")), path  # those hold no text
        compared += 1
    assert compared == 10
