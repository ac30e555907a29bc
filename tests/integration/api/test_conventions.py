"""OnApp wire conventions: suffixes, content types, error bodies, tolerated quirks of real clients."""

from __future__ import annotations

import pytest

from tests.conftest import ADMIN


def test_version_json_is_exactly_what_the_php_wrapper_needs(api):
    r = api.get("/version.json?")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert r.json() == {"version": "6.5.0"}


def test_version_xml_puts_version_under_the_root(api):
    r = api.get("/version.xml")
    assert r.headers["content-type"] == "application/xml; charset=utf-8"
    assert "<hash>\n  <version>6.5.0</version>\n</hash>" in r.text


@pytest.mark.parametrize(
    "accept,expected",
    [
        ("application/xml", "application/xml; charset=utf-8"),
        ("application/json", "application/json; charset=utf-8"),
        ("*/*", "application/json; charset=utf-8"),
    ],
)
def test_without_suffix_the_accept_header_decides(api, accept, expected):
    assert api.get("/profile", headers={"Accept": accept}).headers["content-type"] == expected


def test_suffix_wins_over_accept(api):
    r = api.get("/profile.json", headers={"Accept": "application/xml"})
    assert r.headers["content-type"] == "application/json; charset=utf-8"


def test_doubled_slashes_and_trailing_question_mark_are_tolerated(api):
    r = api.client.get("http://testserver//settings//data_stores.json?", auth=ADMIN)
    assert r.status_code == 200
    assert r.json() == []


def test_get_and_delete_tolerate_json_content_type_and_stale_body(api, world):
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    r = api.request(
        "GET",
        f"/virtual_machines/{world['vm_a']['id']}.json?",
        headers=headers,
        content=b'{"backup":{"label":"","id":12}}',
    )
    assert r.status_code == 200
    ds = api.data_store(label="spare")
    r = api.request(
        "DELETE", f"/settings/data_stores/{ds['id']}.json?", headers=headers, content=b'{"backup":{"label":"","id":12}}'
    )
    assert r.status_code == 204
    assert r.content == b""


def test_missing_credentials_answer_401_in_onapp_form(api):
    r = api.client.get("/version.json")
    assert r.status_code == 401
    assert r.json() == {"errors": ["You need to sign in or sign up before continuing."]}
    assert r.headers["www-authenticate"].startswith("Basic")


@pytest.mark.parametrize("auth", [("admin", "wrong"), ("nobody", "whatever"), ("", "")])
def test_bad_credentials_answer_401(api, auth):
    assert api.client.get("/version.json", auth=auth).status_code == 401


def test_login_or_email_with_password_or_api_key(api):
    user = api.user("carol")
    key = api.post(f"/users/{user['id']}/make_new_api_key.json").json()["user"]["api_key"]
    for login in ("carol", "carol@example.com"):
        for secret in ("carol-password", key):
            assert api.client.get("/profile.json", auth=(login, secret)).status_code == 200, (login, secret)


def test_new_api_key_replaces_the_old_one(api):
    user = api.user("dave")
    old = api.post(f"/users/{user['id']}/make_new_api_key.json").json()["user"]["api_key"]
    assert api.client.get("/profile.json", auth=("dave", old)).status_code == 200
    api.post(f"/users/{user['id']}/make_new_api_key.json")
    assert api.client.get("/profile.json", auth=("dave", old)).status_code == 401


def test_password_change_invalidates_cached_credentials(api):
    user = api.user("erin")
    assert api.client.get("/profile.json", auth=("erin", "erin-password")).status_code == 200
    assert api.put(f"/users/{user['id']}.json", {"user": {"password": "another-password"}}).status_code == 204
    assert api.client.get("/profile.json", auth=("erin", "erin-password")).status_code == 401
    assert api.client.get("/profile.json", auth=("erin", "another-password")).status_code == 200


def test_verified_credentials_are_not_hashed_again(app, api, monkeypatch):
    api.get("/profile.json")
    calls = []
    original = app.state.auth._verify
    monkeypatch.setattr(app.state.auth, "_verify", lambda *a: calls.append(1) or original(*a))
    for _ in range(5):
        assert api.get("/profile.json").status_code == 200
    assert calls == []
    assert api.client.get("/profile.json", auth=("admin", "wrong")).status_code == 401
    assert calls == [1]  # a different secret is checked for real


def test_unknown_route_answers_404_in_onapp_form(api):
    r = api.get("/no/such/thing.json")
    assert r.status_code == 404
    assert "errors" in r.json()


def test_non_numeric_id_is_404(api):
    r = api.get("/virtual_machines/abc.json")
    assert r.status_code == 404
    assert r.json() == {"errors": ["Resource not found"]}


def test_xml_error_body(api):
    r = api.get("/virtual_machines/999.xml")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/xml; charset=utf-8"
    assert "<errors>\n  <error>VirtualMachine not found</error>\n</errors>" in r.text


def test_openapi_document_is_published(api):
    doc = api.client.get("/openapi.json").json()
    assert "/virtual_machines/{vm_id}/backups/images" in doc["paths"]
    assert "requestBody" in doc["paths"]["/users"]["post"]


LISTS = [
    ("/users", "users"),
    ("/templates", "image_templates"),
    ("/settings/data_stores", "data_stores"),
    ("/settings/backup_servers", "backup_servers"),
    ("/virtual_machines", "virtual_machines"),
    ("/users/{alice}/virtual_machines", "virtual_machines"),
    ("/virtual_machines/{vm}/disks", "disks"),
    ("/settings/disks", "disks"),
    ("/virtual_machines/{vm}/backups", "backups"),
    ("/virtual_machines/{vm}/backups/images", "backups"),
    ("/virtual_machines/{vm}/backups/files", "backups"),
    ("/settings/disks/{disk}/backups", "backups"),
    ("/virtual_machines/{vm}/disks/{disk}/backups", "backups"),
    ("/users/{alice}/backups", "backups"),
    ("/transactions", "transactions"),
]


@pytest.mark.parametrize("path,root", LISTS)
def test_every_list_answers_in_json_and_typed_xml(app, api, world, path, root):
    from defusedxml.ElementTree import fromstring

    from tests.integration.api.helpers import make_backup

    make_backup(app, disk_id=world["disk_a"]["id"])
    url = path.format(alice=world["alice"]["id"], vm=world["vm_a"]["id"], disk=world["disk_a"]["id"])
    as_json = api.get(url + ".json")
    assert as_json.status_code == 200 and isinstance(as_json.json(), list)
    item_root = root[:-1]
    assert all(list(item) == [item_root] for item in as_json.json())
    as_xml = api.get(url + ".xml")
    assert as_xml.status_code == 200 and as_xml.headers["content-type"] == "application/xml; charset=utf-8"
    doc = fromstring(as_xml.content)
    assert doc.tag == root and doc.get("type") == "array"
    assert len(doc) == len(as_json.json())
    for element, item in zip(doc, as_json.json(), strict=True):
        fields = item[item_root]
        assert element.tag == item_root
        for child in element:
            value = fields[child.tag]
            expected = {bool: "boolean", int: "integer", type(None): None, list: "array"}.get(type(value))
            if value is None:
                assert child.get("nil") == "true", child.tag
            elif expected:
                assert child.get("type") == expected, child.tag
