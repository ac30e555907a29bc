"""Bad input: each answers 422 (or 404) with an OnApp error body, never a 500, and changes nothing."""

from __future__ import annotations

import pytest


def _count(api, path):
    return len(api.get(path).json())


@pytest.mark.parametrize(
    "raw,ctype",
    [
        (b'{"data_store": {"label": ', "application/json"),
        (b"<data_store><label>x</data_store>", "application/xml"),
        (b"[[[[" * 10, "application/json"),
        (b"\xff\xfe", "application/json"),
    ],
)
def test_malformed_bodies_are_422(api, raw, ctype):
    before = _count(api, "/settings/data_stores.json")
    r = api.request("POST", "/settings/data_stores.json", content=raw, headers={"Content-Type": ctype})
    assert r.status_code == 422, r.text
    assert "errors" in r.json()
    assert _count(api, "/settings/data_stores.json") == before


def test_deeply_nested_json_is_refused(api):
    raw = b'{"data_store": ' + b'{"a":' * 5000 + b"1" + b"}" * 5001
    r = api.request("POST", "/settings/data_stores.json", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert "nested" in r.text


def test_xml_entity_expansion_is_refused(api):
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
        b"<data_store><label>&b;</label></data_store>"
    )
    r = api.request("POST", "/settings/data_stores.xml", content=bomb, headers={"Content-Type": "application/xml"})
    assert r.status_code == 422
    assert _count(api, "/settings/data_stores.json") == 0


def test_oversize_body_is_refused(api):
    raw = b'{"data_store": {"label": "' + b"x" * (2 * 1024 * 1024) + b'"}}'
    r = api.request("POST", "/settings/data_stores.json", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert "larger than" in r.json()["errors"][0]


def test_wrong_types_name_the_field(api, world):
    r = api.post("/virtual_machines.json", {"virtual_machine": {"label": "x", "user_id": "abc", "template_id": 1}})
    assert r.status_code == 422
    assert "user_id" in r.json()["errors"]


def test_numeric_strings_are_accepted_for_ids(api, world):
    r = api.post(
        "/virtual_machines.json",
        {
            "virtual_machine": {
                "label": "x",
                "user_id": str(world["alice"]["id"]),
                "template_id": str(world["template"]["id"]),
            }
        },
    )
    assert r.status_code == 201


def test_missing_required_fields(api):
    r = api.post("/users.json", {"user": {"login": "zed"}})
    assert r.status_code == 422
    errors = r.json()["errors"]
    assert errors["email"] == ["can't be blank"] and errors["password"] == ["can't be blank"]


def test_unknown_fields_are_refused(api):
    r = api.post("/settings/data_stores.json", {"data_store": {"label": "x", "colour": "red"}})
    assert r.status_code == 422
    assert r.json()["errors"] == {"colour": ["is not a known attribute"]}


def test_missing_root_key(api):
    r = api.post("/settings/data_stores.json", {"label": "x"})
    assert r.status_code == 422
    assert "data_store" in r.json()["errors"]


def test_disk_on_unknown_data_store(api, world):
    before = _count(api, "/settings/disks.json")
    r = api.post(
        f"/virtual_machines/{world['vm_a']['id']}/disks.json",
        {"disk": {"label": "d", "disk_size": 1, "data_store_id": 999}},
    )
    assert r.status_code == 422
    assert "data_store_id" in r.json()["errors"]
    assert _count(api, "/settings/disks.json") == before


def test_disk_on_unknown_vm_is_404(api, world):
    r = api.post(
        "/virtual_machines/999/disks.json",
        {"disk": {"label": "d", "disk_size": 1, "data_store_id": world["data_store"]["id"]}},
    )
    assert r.status_code == 404


def test_relative_image_path_is_refused(api, world):
    r = api.put(f"/settings/disks/{world['disk_a']['id']}.json", {"disk": {"image_path": "../etc/passwd"}})
    assert r.status_code == 422


def test_duplicate_login_is_422(api):
    api.user("frank")
    r = api.post("/users.json", {"user": {"login": "frank", "email": "other@example.com", "password": "12345678"}})
    assert r.status_code == 422
    assert r.json()["errors"] == {"login": ["has already been taken"]}


def test_invalid_email_and_time_zone(api):
    r = api.post(
        "/users.json", {"user": {"login": "g", "email": "nope", "password": "12345678", "time_zone": "Mars/Olympus"}}
    )
    assert r.status_code == 422
    assert set(r.json()["errors"]) == {"email", "time_zone"}


def test_xml_request_body_is_accepted(api):
    raw = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<data_store><label>xmlds</label>'
        b'<data_store_type>vmware</data_store_type><enabled type="boolean">false</enabled></data_store>'
    )
    r = api.request("POST", "/settings/data_stores.xml", content=raw, headers={"Content-Type": "application/xml"})
    assert r.status_code == 201, r.text
    assert "<data_store_type>vmware</data_store_type>" in r.text
    assert '<enabled type="boolean">false</enabled>' in r.text


def test_deleting_things_in_use_is_refused(api, world):
    assert api.delete(f"/settings/data_stores/{world['data_store']['id']}.json").status_code == 422
    assert api.delete(f"/users/{world['alice']['id']}.json").status_code == 422


def test_non_ascii_digits_are_not_numbers(api):
    # str.isdigit() accepts "³" and "٣", int() does not: each was a 500 (found by the fuzz test).
    assert api.get("/transactions/page/%C2%B3.json").status_code == 404  # names no page, as any non-number
    r = api.get("/settings/backup_servers/1/backups_search.json?size[from]=%C2%B3")
    assert r.status_code == 422 and "size[from]" in r.text
    xml = '<data_store><label type="integer">\u0663</label></data_store>'
    r = api.post("/settings/data_stores.xml", content=xml.encode(), headers={"Content-Type": "application/xml"})
    assert r.status_code == 201, r.text  # not an integer, so the label stays the text sent
    assert "<label>\u0663</label>" in r.text
