"""Logins and emails are one namespace: no user may sign in with a name that another user signs in with.

Sign-in accepts a login or an email, so a login set to another user's email used to shadow that user's email
sign-in (the admin's included). The names are reserved in signin_names (db/models/users.py), whose primary key also
settles two requests racing for one name.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from alembic import command
from sqlalchemy import select, text

from tests.api_client import Api
from tests.conftest import ADMIN
from vmbackup.db.migrate import alembic_config
from vmbackup.db.models import SignInName, User
from vmbackup.db.queries import users as user_queries
from vmbackup.errors import Invalid
from vmbackup.services import users

TAKEN = ["has already been taken"]


def _put(api: Api, user_id: int, **fields: Any) -> Any:
    return api.put(f"/users/{user_id}.json", {"user": fields})


def _post(api: Api, **fields: Any) -> Any:
    return api.post("/users.json", {"user": {"password": "some-password", **fields}})


def test_a_login_cannot_be_set_to_another_users_email(api: Api) -> None:
    bob = api.user("bob")
    for value in ("admin@localhost", "ADMIN@localhost"):
        r = _put(api, bob["id"], login=value)
        assert r.status_code == 422, r.text
        assert r.json() == {"errors": {"login": TAKEN}}
    # The user may not do it to itself either (users may edit their own login).
    r = _put(api.as_("bob", "bob-password"), bob["id"], login="admin@localhost")
    assert r.status_code == 422
    assert api.get("/version.json", auth=("admin@localhost", ADMIN[1])).status_code == 200
    r = _post(api, login="admin@localhost", email="carol@example.com")
    assert r.status_code == 422 and r.json() == {"errors": {"login": TAKEN}}


def test_an_email_cannot_be_set_to_another_users_login(api: Api) -> None:
    bob = api.user("bob")
    api.user("x.y@example.com", email="carol@example.com")  # a login that looks like an email
    r = _put(api, bob["id"], email="X.Y@example.com")
    assert r.status_code == 422 and r.json() == {"errors": {"email": TAKEN}}
    r = _post(api, login="dave", email="x.y@example.com")
    assert r.status_code == 422 and r.json() == {"errors": {"email": TAKEN}}
    assert api.get("/version.json", auth=("x.y@example.com", "x.y@example.com-password")).status_code == 200


def test_own_names_and_freed_names_are_allowed(api: Api) -> None:
    bob = api.user("bob")
    assert _put(api, bob["id"], login="bob@example.com").status_code == 204  # its own email: still one user
    assert api.get("/version.json", auth=("bob@example.com", "bob-password")).status_code == 200
    assert _put(api, bob["id"], login="bobby", email="bobby@example.com").status_code == 204
    # Both old names are free again, in either column.
    carol = api.user("bob@example.com", email="bob2@example.com")
    assert carol["login"] == "bob@example.com"
    assert api.delete(f"/users/{carol['id']}.json").status_code == 204
    assert api.user("bob2@example.com", email="bob3@example.com")["login"] == "bob2@example.com"


def test_names_follow_every_write(app: Any, api: Api) -> None:
    bob = api.user("bob")
    _put(api, bob["id"], email="Robert@Example.com")
    with app.state.sessions() as db:
        rows = db.execute(select(SignInName.name, SignInName.user_id).order_by(SignInName.name)).all()
    admin_id = next(u["id"] for u in [r["user"] for r in api.get("/users.json").json()] if u["login"] == "admin")
    assert [tuple(r) for r in rows] == [
        ("admin", admin_id),
        ("admin@localhost", admin_id),
        ("bob", bob["id"]),
        ("robert@example.com", bob["id"]),
    ]
    api.delete(f"/users/{bob['id']}.json")
    with app.state.sessions() as db:
        assert set(db.scalars(select(SignInName.user_id))) == {admin_id}


def test_the_database_refuses_a_name_the_check_missed(app: Any, api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    # As if a concurrent request had taken the name between the check and the commit.
    real = user_queries.taken
    calls = {"n": 0}

    def blind_first(*args: Any, **kwargs: Any) -> list[str]:
        calls["n"] += 1
        return [] if calls["n"] == 1 else real(*args, **kwargs)

    monkeypatch.setattr(user_queries, "taken", blind_first)
    r = _post(api, login="admin@localhost", email="eve@example.com")
    assert r.status_code == 422, r.text
    assert r.json() == {"errors": {"login": TAKEN}}
    with app.state.sessions() as db:
        assert db.scalar(select(User).where(User.email == "eve@example.com")) is None


def test_two_requests_racing_for_one_name_one_wins(app: Any, api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    real = user_queries.taken
    both_checked = threading.Barrier(2, timeout=30)
    local = threading.local()

    def checked_together(*args: Any, **kwargs: Any) -> list[str]:
        out = real(*args, **kwargs)
        if not getattr(local, "waited", False):  # the first check of each request: both pass it, then both commit
            local.waited = True
            both_checked.wait()
        return out

    monkeypatch.setattr(user_queries, "taken", checked_together)
    auth, sessions = app.state.auth, app.state.sessions
    with sessions() as db:
        admin = db.scalar(select(User).where(User.login == "admin"))
        db.expunge(admin)
    outcomes: list[str] = []

    def create(login: str, email: str) -> None:
        with sessions() as db:
            try:
                users.create_user(db, admin, auth, {"login": login, "email": email, "password": "pw-12345678"})
                outcomes.append("created")
            except Invalid as exc:
                outcomes.append(f"invalid {sorted(exc.fields or {})}")

    threads = [
        threading.Thread(target=create, args=("shared@example.com", "one@example.com")),
        threading.Thread(target=create, args=("two", "Shared@example.com")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) in (["created", "invalid ['email']"], ["created", "invalid ['login']"]), outcomes


def test_the_migration_reserves_existing_names_older_account_first(database_url: str) -> None:
    from vmbackup.db.session import make_engine

    engine = make_engine(database_url)
    cfg = alembic_config()
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0005")  # the revision before sign-in names
            # Legacy data: carol's login is alice's email (what is refused now).
            insert = text(
                "INSERT INTO users (id, identifier, login, email, role, status, time_zone, password_hash, created_at,"
                " updated_at) VALUES (:id, 'x', :login, :email, 'user', 'active', 'UTC', 'x', :now, :now)"
            )
            for row in [(1, "alice", "Alice@example.com"), (2, "alice@example.com", "carol@example.com")]:
                conn.execute(insert, dict(zip(("id", "login", "email"), row, strict=True), now="2026-01-01"))
            command.upgrade(cfg, "head")
            names = dict(conn.execute(text("SELECT name, user_id FROM signin_names")).all())
            conn.execute(text("DELETE FROM signin_names"))
            conn.execute(text("DELETE FROM users"))
    finally:
        engine.dispose()
    assert names == {"alice": 1, "alice@example.com": 1, "carol@example.com": 2}
