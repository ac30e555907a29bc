"""Text no database or XML document can hold (api/text.py) is refused with a 422 wherever a request carries it, on
SQLite and PostgreSQL alike, and what is already stored never makes an XML answer unreadable."""

from __future__ import annotations

from xml.etree import ElementTree

import pytest

from tests.integration.api.helpers import make_backup
from vmbackup.db.models import Backup

# U+0000: PostgreSQL text refuses it (was a 500 there). U+0007: XML 1.0 cannot carry it (was stored, after which
# every XML listing holding it was not well-formed). U+D800 alone: no UTF-8 form (was a 500 on both databases).
BAD = {"nul": "\u0000", "bell": "\u0007", "lone surrogate": "\ud800", "U+FFFF": "\uffff"}
CODES = {"nul": "U+0000", "bell": "U+0007", "lone surrogate": "U+D800", "U+FFFF": "U+FFFF"}


def _raw_json(doc: str) -> bytes:
    # json= in httpx would refuse the lone surrogate; a client can still send it as a \\ud800 escape.
    return doc.encode("ascii")


def _escape(char: str) -> str:
    return f"\\u{ord(char):04x}"


@pytest.fixture
def objects(api, world):
    backup_id = make_backup(api.client.app, disk_id=world["disk_a"]["id"], note="kept")
    return {**world, "backup_id": backup_id}


# (method, path template, root, field, how to read the field back afterwards)
BODY_CASES = [
    ("POST", "/settings/data_stores.json", "data_store", "label", "/settings/data_stores.json"),
    ("POST", "/users.json", "user", "first_name", "/users.json"),
    ("PUT", "/backups/{backup_id}.json", "backup", "note", "/backups/{backup_id}.json"),
    ("POST", "/settings/disks/{disk}/backups.json", "backup", "note", "/settings/disks/{disk}/backups.json"),
    ("PUT", "/settings/disks/{disk}.json", "disk", "mount_point", "/settings/disks/{disk}.json"),
    ("PUT", "/virtual_machines/{vm}.json", "virtual_machine", "hostname", "/virtual_machines/{vm}.json"),
]
USER = ',"login":"zed","email":"zed@example.com","password":"zed-password"'


@pytest.mark.parametrize("method,path,root,field,readback", BODY_CASES, ids=[c[1] for c in BODY_CASES])
def test_unstorable_text_in_a_body_field_is_422_and_nothing_changes(api, objects, method, path, root, field, readback):
    ids = {"backup_id": objects["backup_id"], "disk": objects["disk_a"]["id"], "vm": objects["vm_a"]["id"]}
    url, back = path.format(**ids), readback.format(**ids)
    before = api.get(back).text
    extra = USER if root == "user" else ""
    for kind, char in BAD.items():
        body = f'{{"{root}":{{"{field}":"a{_escape(char)}b"{extra}}}}}'
        r = api.request(method, url, content=_raw_json(body), headers={"Content-Type": "application/json"})
        assert r.status_code == 422, (kind, r.text)
        assert r.json() == {"errors": {field: [f"contains a character that cannot be stored ({CODES[kind]})"]}}
        assert api.get(back).text == before


def test_unstorable_text_nested_in_a_body_names_its_place(api):
    body = '{"data_store":{"label":"ok","extra":[{"deep":"\\u0000"}]}}'
    r = api.request(
        "POST", "/settings/data_stores.json", content=body.encode(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422
    assert r.json() == {"errors": {"extra.0.deep": ["contains a character that cannot be stored (U+0000)"]}}


def test_unstorable_field_name_is_refused_and_echoed_readably(api):
    for suffix in ("json", "xml"):
        body = '{"data_store":{"label":"ok","\\ud800\\u0000":1}}'
        r = api.request(
            "POST",
            f"/settings/data_stores.{suffix}",
            content=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 422, r.text
        message = "contains a character that cannot be stored (U+D800)"
        if suffix == "xml":
            assert ElementTree.fromstring(r.content).findtext("error") == f"\ufffd\ufffd {message}"
        else:
            assert r.json() == {"errors": {"\ufffd\ufffd": [message]}}
    assert api.get("/settings/data_stores.json").json() == []


def test_tab_newline_and_carriage_return_are_kept(api, objects):
    note = "line 1\r\n\tline 2"
    assert api.put(f"/backups/{objects['backup_id']}.json", {"backup": {"note": note}}).status_code == 204
    assert api.get(f"/backups/{objects['backup_id']}.json").json()["backup"]["note"] == note.strip()


QUERY_CASES = [
    ("/transactions.json?page=1{c}", "page"),
    ("/transactions.json?per_page{c}=5", "per_page\ufffd"),
    ("/settings/backup_servers/1/backups_search.json?size[from]={c}", "size[from]"),
    ("/settings/backup_servers/1/backups_search.json?period[startdate]=2026-01-01{c}", "period[startdate]"),
    ("/virtual_machines.json?label={c}", "label"),
]


def test_unstorable_text_in_a_query_parameter_is_422_naming_it(api):
    for url, field in QUERY_CASES:
        for kind in ("nul", "bell"):
            r = api.get(url.format(c="%" + f"{ord(BAD[kind]):02X}"))
            assert r.status_code == 422, (url, r.text)
            assert r.json() == {"errors": {field: [f"contains a character that cannot be stored ({CODES[kind]})"]}}


@pytest.mark.parametrize(
    "path", ["/virtual_machines/%00.json", "/virtual_machines/1%00/backups.json", "/settings/data_stores/%07.xml"]
)
def test_unstorable_text_in_a_path_is_422(api, world, path):
    r = api.get(path)
    assert r.status_code == 422, r.text
    if path.endswith(".xml"):
        assert r.headers["content-type"] == "application/xml; charset=utf-8"
        assert ElementTree.fromstring(r.content).findtext("error") == (
            "The path contains a character that cannot be stored (U+0007)"
        )
    else:
        assert r.json() == {"errors": ["The path contains a character that cannot be stored (U+0000)"]}


def test_xml_refuses_such_characters_in_bodies_too(api, objects):
    for raw in (b"<backup><note>a&#7;b</note></backup>", b"<backup><note>a\x07b</note></backup>"):
        r = api.request(
            "PUT", f"/backups/{objects['backup_id']}.xml", content=raw, headers={"Content-Type": "application/xml"}
        )
        assert r.status_code == 422, r.text
        assert "Malformed XML" in r.text
    assert api.get(f"/backups/{objects['backup_id']}.json").json()["backup"]["note"] == "kept"


def test_xml_listing_stays_well_formed_with_control_characters_already_stored(api, objects):
    """Data stored before such characters were refused (here written straight to the database)."""
    stored = "bell\u0007 vt\u000b esc\u001b <&>\"' tab\tend"
    with api.client.app.state.sessions() as db:
        db.get(Backup, objects["backup_id"]).note = stored
        db.commit()
    vm, disk = objects["vm_a"]["id"], objects["disk_a"]["id"]
    for path in (
        f"/virtual_machines/{vm}/backups.xml",
        f"/settings/disks/{disk}/backups.xml",
        f"/backups/{objects['backup_id']}.xml",
    ):
        r = api.get(path)
        assert r.status_code == 200
        root = ElementTree.fromstring(r.content)  # a real XML parser: raises on a document that is not well-formed
        notes = [el.text for el in root.iter("note")]
        assert notes == ["bell\ufffd vt\ufffd esc\ufffd <&>\"' tab\tend"], (path, notes)
    # JSON can carry them (as escapes): shown as stored.
    assert api.get(f"/backups/{objects['backup_id']}.json").json()["backup"]["note"] == stored
