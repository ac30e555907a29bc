"""Failed logins are rate limited per login and per client address; successful ones are never slowed."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from tests.acceptance.serve_process import serving
from tests.conftest import ADMIN
from vmbackup.config import SettingsError, load_settings
from vmbackup.db.models import User
from vmbackup.services.auth import LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_counts_failures_in_a_sliding_window():
    clock = Clock()
    t = LoginThrottle(max_failures=3, window=60, clock=clock)
    for _ in range(3):
        assert t.retry_after("a") == 0
        t.failed("a")
        clock.now += 1
    assert t.retry_after("a") == 57  # the first failure (at 1000) leaves the window at 1060; now is 1003
    assert t.retry_after("b") == 0
    assert t.retry_after("b", "a") == 57
    clock.now += 57
    assert t.retry_after("a") == 0


def test_throttle_memory_is_bounded_and_zero_disables():
    t = LoginThrottle(max_failures=1, window=60, max_keys=10)
    for i in range(1000):
        t.failed(f"k{i}")
    assert len(t._failures) == 10
    off = LoginThrottle(max_failures=0)
    for _ in range(100):
        off.failed("a")
    assert off.retry_after("a") == 0


def _client(app, host: str) -> TestClient:
    return TestClient(app, client=(host, 1234))


def test_eleventh_failed_login_gets_429_with_retry_after(app, api):
    api.user("alice")
    client = _client(app, "10.0.0.1")
    for _ in range(10):
        assert client.get("/version.json", auth=("alice", "wrong-password")).status_code == 401
    r = client.get("/version.json", auth=("alice", "wrong-password"))
    assert r.status_code == 429
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert r.json() == {"errors": ["Too many failed login attempts; try again later."]}
    assert 0 < int(r.headers["Retry-After"]) <= 60
    # While throttled even the right password waits: a guess must not be confirmed at any rate ...
    assert client.get("/version.json", auth=("alice", "alice-password")).status_code == 429
    # ... also from another address (the login is throttled) and by email (the same account).
    assert _client(app, "10.0.0.2").get("/version.json", auth=("alice@example.com", "x-wrong")).status_code == 429
    # Other accounts from other addresses are not affected.
    assert _client(app, "10.0.0.3").get("/version.json", auth=ADMIN).status_code == 200


def test_xml_caller_gets_xml_429(app, api):
    client = _client(app, "10.0.0.9")
    for _ in range(10):
        client.get("/version.xml", auth=("nobody", "wrong-password"))
    r = client.get("/version.xml", auth=("nobody", "wrong-password"))
    assert r.status_code == 429
    assert "<errors>" in r.text and "Retry-After" in r.headers


def test_one_address_spraying_logins_is_throttled(app, api):
    client = _client(app, "10.0.0.4")
    for i in range(10):
        assert client.get("/version.json", auth=(f"user{i}", "guess-123")).status_code == 401
    assert client.get("/version.json", auth=("someone-else", "guess-123")).status_code == 429
    # The address is throttled, so even the admin's right password from it waits.
    assert client.get("/version.json", auth=ADMIN).status_code == 429


def test_api_key_still_works_while_the_password_is_under_attack(app, api):
    alice = api.user("alice")
    key = api.post(f"/users/{alice['id']}/make_new_api_key.json").json()["user"]["api_key"]
    attacker = _client(app, "10.0.0.5")
    for _ in range(11):
        attacker.get("/version.json", auth=("alice", "guess-123"))
    assert attacker.get("/version.json", auth=("alice", "alice-password")).status_code == 429
    assert _client(app, "10.0.0.6").get("/version.json", auth=("alice", key)).status_code == 200


def test_successful_logins_are_never_counted(app, api):
    client = _client(app, "10.0.0.7")
    for _ in range(50):
        assert client.get("/version.json", auth=ADMIN).status_code == 200
    assert app.state.throttle.retry_after("ip:10.0.0.7") == 0


def test_missing_credentials_are_not_failures(app, api):
    client = _client(app, "10.0.0.8")
    for _ in range(20):
        assert client.get("/version.json").status_code == 401
    assert client.get("/version.json", auth=ADMIN).status_code == 200


@pytest.mark.parametrize("value", ["0"])
def test_limit_can_be_turned_off(settings, value):
    from vmbackup.api.app import create_app

    app = create_app(settings.model_copy(update={"login_failures_per_minute": int(value)}))
    try:
        client = _client(app, "10.1.0.1")
        for _ in range(15):
            assert client.get("/version.json", auth=("admin", "wrong-password")).status_code == 401
        assert client.get("/version.json", auth=ADMIN).status_code == 200
    finally:
        app.state.engine.dispose()


def _spray(client: httpx.Client, forwarded_for: Callable[[int], str]) -> list[int]:
    """Ten wrong passwords for ten made-up logins, each with its own X-Forwarded-For; then the statuses of one more."""
    for i in range(10):
        r = client.get("/version.json", auth=(f"nobody{i}", "guess-123"), headers={"X-Forwarded-For": forwarded_for(i)})
        assert r.status_code == 401, r.text
    return [
        client.get(
            "/version.json", auth=("someone", "guess-123"), headers={"X-Forwarded-For": forwarded_for(99)}
        ).status_code
    ]


def test_forwarded_for_from_an_untrusted_peer_does_not_rotate_the_address(tmp_path):
    # The served process as deployed by default: uvicorn believed X-Forwarded-For from 127.0.0.1, so a local client
    # (or one behind a local proxy passing the header through) named a fresh address each time and was never throttled.
    with serving(tmp_path) as served, httpx.Client(base_url=served.base) as client:
        assert _spray(client, lambda i: f"198.51.100.{i}") == [429]


def test_forwarded_for_from_a_trusted_proxy_names_the_client(tmp_path):
    with (
        serving(tmp_path, {"VMBACKUP_TRUSTED_PROXIES": "127.0.0.1,::1"}) as served,
        httpx.Client(base_url=served.base) as client,
    ):
        assert _spray(client, lambda i: "203.0.113.7") == [429]  # one client behind the proxy: throttled
        other = client.get("/version.json", auth=ADMIN, headers={"X-Forwarded-For": "203.0.113.8"})
        assert other.status_code == 200  # another client behind the same proxy is not


def test_trusted_proxies_must_be_addresses(tmp_path):
    with pytest.raises(SettingsError, match="VMBACKUP_TRUSTED_PROXIES"):
        load_settings({"VMBACKUP_TRUSTED_PROXIES": "proxy.example.com"}, data_dir=str(tmp_path))
    assert load_settings({"VMBACKUP_TRUSTED_PROXIES": "10.0.0.1, 10.1.0.0/16"}).trusted_proxies == (
        "10.0.0.1",
        "10.1.0.0/16",
    )


# The credential cache (services.auth.Authenticator.recall) answers a repeated sign-in without reading the user
# row; these check that its answers obey the throttle like the full path (api/deps.authenticate).


def test_remembered_credentials_wait_while_the_account_is_throttled(app, api):
    api.user("alice")
    assert _client(app, "10.0.1.1").get("/version.json", auth=("alice", "alice-password")).status_code == 200
    for _ in range(10):  # from another address: the account is throttled, not that address
        _client(app, "10.0.1.2").get("/version.json", auth=("alice", "guess-123"))
    assert _client(app, "10.0.1.3").get("/version.json", auth=("alice", "alice-password")).status_code == 429


def test_remembered_credentials_wait_while_the_address_is_throttled(app, api):
    api.user("alice")
    client = _client(app, "10.0.1.4")
    assert client.get("/version.json", auth=("alice", "alice-password")).status_code == 200
    for i in range(10):  # other logins from this address: the address is throttled, not the account
        client.get("/version.json", auth=(f"user{i}", "guess-123"))
    assert client.get("/version.json", auth=("alice", "alice-password")).status_code == 429


def test_a_remembered_suspended_account_counts_failures_per_account_and_address(app, api):
    alice = api.user("alice")
    assert _client(app, "10.0.1.5").get("/version.json", auth=("alice", "alice-password")).status_code == 200
    with app.state.sessions() as db:
        db.execute(update(User).where(User.id == alice["id"]).values(status="suspended"))
        db.commit()
    for host in ("10.0.1.6", "10.0.1.7"):  # the first read from the row, the second from the cache
        assert _client(app, host).get("/version.json", auth=("alice", "alice-password")).status_code == 401
    failures = app.state.throttle._failures
    assert len(failures[f"user:{alice['id']}"]) == 2
    assert len(failures["ip:10.0.1.6"]) == len(failures["ip:10.0.1.7"]) == 1
