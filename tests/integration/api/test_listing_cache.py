"""The in-memory listing cache (api/listing_cache.py): served from memory, never out of date, never to the wrong
caller. Every test runs on SQLite and PostgreSQL, against the real change feed of each."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from tests.integration.api.helpers import make_backup, wait_idle


def listing(who: Any, vm_id: int, fmt: str = "json") -> Any:
    return who.get(f"/virtual_machines/{vm_id}/backups/images.{fmt}")


@pytest.fixture
def cache(app: Any, api: Any) -> Any:
    """The app's cache, with its change feed watching (the watcher thread starts with the app)."""
    cache = app.state.listing_cache
    assert cache is not None
    assert cache.clock.feed.wait_ready(10), "the change feed did not come up"
    return cache


def _wait_for_feed(cache: Any, before: int | None) -> None:
    """Wait until the feed has seen a commit made elsewhere (it watches in a thread of its own)."""
    deadline = time.monotonic() + 10
    while cache.clock.feed.version() == before and time.monotonic() < deadline:
        time.sleep(0.01)


def _settle(cache: Any) -> None:
    """Let the feed catch up with the set-up's commits (it sees this process's own too, a moment later), so the
    next fill is not refused as possibly out of date."""
    seen = None
    while seen != cache.version():
        seen = cache.version()
        time.sleep(0.1)


def test_a_repeated_listing_is_served_from_memory_with_the_same_bytes(app, cache, world):
    vm = world["vm_a"]["id"]
    make_backup(app, disk_id=world["disk_a"]["id"])
    alice = world["as_alice"]
    _settle(cache)
    for fmt in ("json", "xml"):
        first = listing(alice, vm, fmt)
        hits = cache.hits
        second = listing(alice, vm, fmt)
        assert cache.hits == hits + 1
        assert (second.status_code, second.content) == (200, first.content)
        assert second.headers["content-type"] == first.headers["content-type"]
        assert second.headers["content-length"] == str(len(first.content))


def test_a_callers_own_write_shows_in_the_next_listing(app, api, cache, world):
    vm, disk = world["vm_a"]["id"], world["disk_a"]["id"]
    backup_id = make_backup(app, disk_id=disk)
    alice = world["as_alice"]
    listing(alice, vm)
    listing(alice, vm)
    assert alice.put(f"/backups/{backup_id}.json", {"backup": {"note": "before the upgrade"}}).status_code == 204
    assert listing(alice, vm).json()[0]["backup"]["note"] == "before the upgrade"
    taken = alice.post(f"/settings/disks/{disk}/backups.json").json()["backup"]
    assert [b["backup"]["id"] for b in listing(alice, vm).json()] == [backup_id, taken["id"]]
    assert alice.delete(f"/backups/{backup_id}.json").status_code == 204
    first = listing(alice, vm).json()[0]["backup"]
    assert first["id"] == taken["id"] or first["locked"] is True  # the worker may have deleted it already
    # The in-process worker's commits (the deletion, the failed take of a missing image) show up too.
    wait_idle(api)
    assert [(b["backup"]["id"], b["backup"]["built"]) for b in listing(alice, vm).json()] == [(taken["id"], False)]


def test_a_commit_by_another_process_shows_in_the_next_listing(app, cache, world, database_url):
    vm = world["vm_a"]["id"]
    backup_id = make_backup(app, disk_id=world["disk_a"]["id"], note="old")
    alice = world["as_alice"]
    listing(alice, vm)
    assert listing(alice, vm).json()[0]["backup"]["note"] == "old"
    before = cache.clock.feed.version()
    # A separate process (as `vmbackup worker`, the CLI or psql would be) changes the row behind the API's back.
    script = f"""
        from sqlalchemy import create_engine, text
        with create_engine({database_url!r}).begin() as conn:
            conn.execute(text("UPDATE backups SET note = 'changed elsewhere' WHERE id = {backup_id}"))
    """
    subprocess.run([sys.executable, "-c", textwrap.dedent(script)], check=True)
    _wait_for_feed(cache, before)
    assert listing(alice, vm).json()[0]["backup"]["note"] == "changed elsewhere"


def test_a_cached_listing_is_never_served_to_another_caller(app, cache, world):
    vm = world["vm_a"]["id"]
    make_backup(app, disk_id=world["disk_a"]["id"])
    listing(world["as_alice"], vm)
    assert listing(world["as_alice"], vm).status_code == 200
    assert listing(world["as_bob"], vm).status_code == 404
    assert listing(world["as_alice"].as_("alice", "wrong-password"), vm).status_code == 401
    assert world["as_alice"].client.get(f"/virtual_machines/{vm}/backups/images.json").status_code == 401


def _alice_listed(app: Any, world: dict[str, Any]) -> tuple[int, Any]:
    """Alice's VM with one backup, listed twice (so it is kept); returns (VM id, Alice's client)."""
    vm = world["vm_a"]["id"]
    make_backup(app, disk_id=world["disk_a"]["id"])
    alice = world["as_alice"]
    listing(alice, vm)
    assert listing(alice, vm).status_code == 200
    return vm, alice


def test_changing_the_password_ends_the_old_credentials_cached_answers(app, api, cache, world):
    vm, alice = _alice_listed(app, world)
    r = api.put(f"/users/{world['alice']['id']}.json", {"user": {"password": "a-new-password-1"}})
    assert r.status_code == 204, r.text
    assert listing(alice, vm).status_code == 401
    assert listing(alice.as_("alice", "a-new-password-1"), vm).status_code == 200


def test_moving_the_vm_to_another_owner_ends_the_old_owners_cached_answers(app, api, cache, world):
    vm, alice = _alice_listed(app, world)
    r = api.put(f"/virtual_machines/{vm}.json", {"virtual_machine": {"user_id": world["bob"]["id"]}})
    assert r.status_code == 204, r.text
    assert listing(alice, vm).status_code == 404
    assert listing(world["as_bob"], vm).status_code == 200


def test_a_throttled_account_is_not_answered_from_memory(app, cache, world):
    vm, alice = _alice_listed(app, world)
    for _ in range(app.state.settings.login_failures_per_minute):
        assert listing(alice.as_("alice", "guess"), vm).status_code == 401
    hits = cache.hits
    r = listing(alice, vm)
    assert r.status_code == 429  # as without the cache: only an API key gets through while throttled
    assert cache.hits == hits


def test_only_complete_successful_listings_are_kept(app, cache, world):
    vm = world["vm_a"]["id"]
    alice = world["as_alice"]
    assert listing(alice, 999_999).status_code == 404
    assert listing(alice, 999_999).status_code == 404
    assert listing(alice.as_("alice", "nope"), vm).status_code == 401
    assert len(cache) == 0
    _settle(cache)
    listing(alice, vm)
    assert len(cache) == 1


def test_turned_off_by_a_zero_lifetime(settings):
    from vmbackup.api.app import create_app

    for field in ("listing_cache_seconds", "auth_cache_seconds"):
        app = create_app(settings.model_copy(update={field: 0}))
        try:
            assert app.state.listing_cache is None
        finally:
            app.state.engine.dispose()


def test_a_password_changed_by_another_process_ends_the_remembered_credential(app, cache, world, database_url):
    alice = world["as_alice"]
    for _ in range(2):  # the second request is answered from the remembered user row (no query)
        assert alice.get("/virtual_machines.json").status_code == 200
    new_hash = app.state.auth.hash_password("changed-elsewhere-1")
    before = cache.clock.feed.version()
    script = f"""
        from sqlalchemy import create_engine, text
        with create_engine({database_url!r}).begin() as conn:
            conn.execute(text("UPDATE users SET password_hash = :h WHERE login = 'alice'"), {{"h": {new_hash!r}}})
    """
    subprocess.run([sys.executable, "-c", textwrap.dedent(script)], check=True)
    _wait_for_feed(cache, before)
    assert alice.get("/virtual_machines.json").status_code == 401
    assert alice.as_("alice", "changed-elsewhere-1").get("/virtual_machines.json").status_code == 200


def test_a_polled_backup_is_served_from_memory_until_it_changes(app, cache, world):
    """GET /backups/:id (what a control panel polls while a backup is pending) goes through the same cache."""
    backup_id = make_backup(app, disk_id=world["disk_a"]["id"], note="old")
    alice = world["as_alice"]
    _settle(cache)
    for fmt in ("json", "xml"):
        first = alice.get(f"/backups/{backup_id}.{fmt}")
        hits = cache.hits
        second = alice.get(f"/backups/{backup_id}.{fmt}")
        assert cache.hits == hits + 1
        assert (second.status_code, second.content) == (200, first.content)
    assert world["as_bob"].get(f"/backups/{backup_id}.json").status_code == 404
    assert alice.put(f"/backups/{backup_id}.json", {"backup": {"note": "new"}}).status_code == 204
    assert alice.get(f"/backups/{backup_id}.json").json()["backup"]["note"] == "new"
