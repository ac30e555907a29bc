"""No plain password or API key is stored: the database holds argon2id hashes and SHA-256 digests only."""

from __future__ import annotations

import hashlib

from sqlalchemy import text

from tests.conftest import ADMIN


def _dump(app) -> str:
    """Every value of every row of every table, as text."""
    out = []
    with app.state.engine.connect() as conn:
        tables = (
            [r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))]
            if (app.state.engine.dialect.name == "sqlite")
            else [
                r[0] for r in conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"))
            ]
        )
        for table in tables:
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                out.extend(str(v) for v in row)
    return "\n".join(out)


def test_database_holds_no_plain_password_or_api_key(app, api):
    alice = api.user("alice", password="alice-plain-secret")
    api.put(f"/users/{alice['id']}.json", {"user": {"password": "alice-new-secret"}})
    key = api.post(f"/users/{alice['id']}/make_new_api_key.json").json()["user"]["api_key"]
    assert api.as_("alice", key).get("/profile.json").status_code == 200
    dump = _dump(app)
    for secret in (ADMIN[1], "alice-plain-secret", "alice-new-secret", key):
        assert secret not in dump
    assert hashlib.sha256(key.encode()).hexdigest() in dump  # the key is kept only as its digest
    assert dump.count("$argon2id$") >= 2


def test_api_answers_never_show_hashes(app, api):
    alice = api.user("alice")
    for path in ("/users.json", f"/users/{alice['id']}.json", "/profile.json", "/users.xml"):
        body = api.get(path).text
        assert "argon2" not in body and "password" not in body.replace("password_changed", "")
    assert "api_key" not in api.get(f"/users/{alice['id']}.json").json()["user"] or (
        api.get(f"/users/{alice['id']}.json").json()["user"]["api_key"] is None
    )


def test_comparisons_are_constant_time():
    import inspect

    from vmbackup.services import auth

    source = inspect.getsource(auth)
    assert "compare_digest(user.api_key_hash" in source and "compare_digest(entry.fingerprint" in source
    assert " == hash_api_key(" not in source
