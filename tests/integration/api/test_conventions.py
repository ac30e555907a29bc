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
