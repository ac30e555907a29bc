"""services/auth.Authenticator on its own: what the credential cache may and may not answer (issue 10; the
`make mutation` survivors these kill are listed in docs/mutation.md)."""

from __future__ import annotations

from vmbackup.db.models import User
from vmbackup.services.auth import Authenticator, hash_api_key


def _auth(ttl: float = 60.0) -> Authenticator:
    return Authenticator(memory_kib=19456, time_cost=2, ttl=ttl)


def _user(auth: Authenticator, password: str, user_id: int = 1) -> User:
    return User(id=user_id, login="alice", password_hash=auth.hash_password(password), api_key_hash=None)


def test_a_remembered_password_stops_working_once_the_password_changed() -> None:
    auth = _auth()
    user = _user(auth, "old-password")
    assert auth.check(user, "alice", "old-password")
    user.password_hash = auth.hash_password("new-password")  # changed within the cache's lifetime
    assert not auth.check(user, "alice", "old-password")
    assert auth.check(user, "alice", "new-password")


def test_a_remembered_api_key_stops_working_once_it_is_replaced() -> None:
    auth = _auth()
    user = _user(auth, "a-password")
    user.api_key_hash = hash_api_key("old-key")
    assert auth.check(user, "alice", "old-key")
    user.api_key_hash = hash_api_key("new-key")
    assert not auth.check(user, "alice", "old-key")


def test_credentials_remembered_for_one_account_do_not_sign_in_another() -> None:
    # The cache is keyed by login and secret; the login may now name another account (renamed, or an email).
    auth = _auth()
    alice = _user(auth, "shared-secret", user_id=1)
    assert auth.check(alice, "alice", "shared-secret")
    other = _user(auth, "something-else", user_id=2)
    assert not auth.check(other, "alice", "shared-secret")


def test_new_password_hashes_use_the_configured_cost() -> None:
    # VMBACKUP_PASSWORD_MEMORY_KIB / _TIME_COST: a hasher on argon2's defaults would ignore the operator's choice.
    assert "$m=19456,t=2," in _auth().hash_password("a-password")
