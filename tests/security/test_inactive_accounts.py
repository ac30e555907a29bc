"""Accounts that are not active cannot sign in, and refusing them costs what refusing a wrong password costs.

User status is not writable through the API (an operator sets it in the database), so these tests set it there.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from tests.api_client import Api
from tests.conftest import ADMIN
from vmbackup.db.models import User


def _set_status(app: Any, user_id: int, status: str) -> None:
    with app.state.sessions() as db:
        db.execute(update(User).where(User.id == user_id).values(status=status))
        db.commit()


def _client(app: Any, host: str) -> TestClient:
    # Each test its own client address, so the per-address login throttle does not mix into what is measured.
    return TestClient(app, client=(host, 1234))


@pytest.mark.parametrize("status", ["suspended", "locked"])
def test_an_inactive_account_cannot_authenticate_with_password_email_or_api_key(app, api, status):
    alice = api.user("alice")
    key = api.post(f"/users/{alice['id']}/make_new_api_key.json").json()["user"]["api_key"]
    client = _client(app, "10.2.0.1")
    credentials = [("alice", "alice-password"), ("alice@example.com", "alice-password"), ("alice", key)]
    for auth in credentials:  # verified once while active: remembered by the credential cache
        assert client.get("/version.json", auth=auth).status_code == 200
    _set_status(app, alice["id"], status)
    for _ in range(2):  # the second round is answered from what the first one verified
        for auth in credentials:
            assert client.get("/version.json", auth=auth).status_code == 401, auth
    _set_status(app, alice["id"], "active")
    assert client.get("/version.json", auth=("alice", key)).status_code == 200


def test_an_account_suspended_before_its_first_sign_in_is_refused_too(app, api):
    alice = api.user("alice")
    _set_status(app, alice["id"], "suspended")
    client = _client(app, "10.2.0.2")
    for _ in range(3):  # uncached, then from the cache: refused each time
        assert client.get("/version.json", auth=("alice", "alice-password")).status_code == 401


class _CountingHasher:
    """Wraps the Authenticator's PasswordHasher and counts verifications."""

    def __init__(self, hasher: Any) -> None:
        self.hasher = hasher
        self.verified = 0
        self.hashed = 0

    def hash(self, password: str) -> str:
        self.hashed += 1
        return str(self.hasher.hash(password))

    def verify(self, hash: str, password: str) -> bool:
        self.verified += 1
        return bool(self.hasher.verify(hash, password))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.hasher, name)


@pytest.fixture
def counting(app: Any, monkeypatch: pytest.MonkeyPatch) -> _CountingHasher:
    spy = _CountingHasher(app.state.auth._hasher)
    monkeypatch.setattr(app.state.auth, "_hasher", spy)
    return spy


def test_every_refusal_runs_one_password_hash(app, api, counting):
    alice = api.user("alice")
    _set_status(app, alice["id"], "suspended")
    client = _client(app, "10.2.0.3")
    cases = [
        ("alice", "wrong-password"),  # suspended, wrong password
        ("alice", "alice-password"),  # suspended, right password, not yet remembered
        ("nobody", "wrong-password"),  # unknown login: a dummy hash
        ("admin", "wrong-password"),  # active, wrong password: the yardstick
    ]
    for auth in cases:
        before = counting.verified
        assert client.get("/version.json", auth=auth).status_code == 401
        assert counting.verified - before == 1, auth


def test_a_suspended_account_with_an_api_key_is_refused_while_throttled(app, api):
    alice = api.user("alice")
    key = api.post(f"/users/{alice['id']}/make_new_api_key.json").json()["user"]["api_key"]
    _set_status(app, alice["id"], "suspended")
    client = _client(app, "10.2.0.5")
    for _ in range(10):
        client.get("/version.json", auth=("alice", "guess-123"))
    assert client.get("/version.json", auth=("alice", key)).status_code == 429


@pytest.mark.slow  # a timing measurement: noisy beside the parallel suite; test_every_refusal_runs_one_password_hash
def test_a_suspended_account_answers_as_slowly_as_a_wrong_password(app, api):  # guards the same in the default run
    alice = api.user("alice")
    _set_status(app, alice["id"], "suspended")
    # Throttling would answer 429 (without hashing) after 10 failures: off for this measurement.
    app.state.throttle._max = 0
    client = _client(app, "10.2.0.4")
    cases = {"active": ("admin", "wrong-password"), "suspended": ("alice", "wrong-password"), "unknown": ("x", "y-z")}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(9):  # interleaved, so a busy moment of the machine slows every case alike
        for name, auth in cases.items():
            started = time.perf_counter()
            assert client.get("/version.json", auth=auth).status_code == 401
            times[name].append(time.perf_counter() - started)
    median = {name: statistics.median(t) for name, t in times.items()}
    # Before the fix a suspended account answered ~10x faster; a generous band absorbs a busy machine.
    assert 0.5 < median["suspended"] / median["active"] < 2, median
    assert 0.5 < median["unknown"] / median["active"] < 2, median


@pytest.mark.parametrize(
    "auth", [("ad\0min", ADMIN[1]), ("\0", "x-secret"), ("admin\0@localhost", "x-secret"), (ADMIN[0], "admin\0secret")]
)
def test_a_nul_in_the_credentials_is_a_401(api: Api, auth: tuple[str, str]) -> None:
    r = api.get("/version.json", auth=auth)
    assert r.status_code == 401, r.text
    assert r.json() == {"errors": ["You need to sign in or sign up before continuing."]}


def test_an_unknown_login_costs_one_hash_check_not_a_new_hash_each_time(app, api, counting):
    # The dummy hash is made once: hashing it anew for each unknown login would make those answers slower than a
    # wrong password for a real account (the timing oracle the other way round).
    client = _client(app, "10.2.0.6")
    for _ in range(3):
        before = counting.verified
        assert client.get("/version.json", auth=("nobody", "wrong-password")).status_code == 401
        assert counting.verified - before == 1
    assert counting.hashed <= 1
