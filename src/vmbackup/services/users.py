from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vmbackup.db.models import User
from vmbackup.db.queries import common, inventory
from vmbackup.db.queries import users as q
from vmbackup.errors import Conflict, Invalid
from vmbackup.services.access import apply, find_owned, require_admin
from vmbackup.services.auth import Authenticator, hash_api_key, new_api_key


def _check_unique(db: Session, login: str | None, email: str | None, except_id: int | None = None) -> None:
    """A login or email is taken when any other user signs in with it, as login or as email, in any case: sign-in
    accepts either (services/auth.py), so one user's login equal to another's email would shadow one of them."""
    taken = q.taken(db, login=login, email=email, except_id=except_id)
    if taken:
        raise Invalid(fields={field: ["has already been taken"] for field in taken})


def _commit_names(db: Session, login: str | None, email: str | None, except_id: int | None = None) -> None:
    """Commit a new or renamed user. The check above ran first, but a concurrent request may have taken the name
    since: the signin_names key (db/models/users.py) then refuses the commit, and the caller gets the same field
    error as if it had come second in the check."""
    try:
        db.commit()
    except IntegrityError:
        db.rollback()
        _check_unique(db, login, email, except_id)
        raise


def list_users(db: Session, actor: User) -> list[User]:
    require_admin(actor)
    return common.all_of(db, User)


def get_user(db: Session, actor: User, user_id: int) -> User:
    return find_owned(db, actor, User, user_id, "User", owner_id=lambda u: u.id)


def create_user(db: Session, actor: User, auth: Authenticator, data: dict[str, Any]) -> User:
    require_admin(actor)
    _check_unique(db, data["login"], data["email"])
    password = data.pop("password")
    user = User(**data, password_hash=auth.hash_password(password))
    db.add(user)
    _commit_names(db, data["login"], data["email"])
    return user


def update_user(db: Session, actor: User, auth: Authenticator, user_id: int, data: dict[str, Any]) -> None:
    user = get_user(db, actor, user_id)
    if "role" in data and not actor.is_admin:
        require_admin(actor)
    # The backup space is what the user bought: only an admin changes it. The user's own value sent back (a client
    # that PUTs what it GOT) changes nothing and passes.
    if data.get("backup_space_limit", user.backup_space_limit) != user.backup_space_limit and not actor.is_admin:
        require_admin(actor)
    if data.get("role") == "user" and user.is_admin and q.count_admins(db) <= 1:
        raise Conflict("The last admin cannot lose the admin role")
    _check_unique(db, data.get("login"), data.get("email"), except_id=user.id)
    if "password" in data:
        user.password_hash = auth.hash_password(data.pop("password"))
    apply(user, data)
    _commit_names(db, data.get("login"), data.get("email"), except_id=user.id)


def delete_user(db: Session, actor: User, user_id: int) -> None:
    require_admin(actor)
    user = get_user(db, actor, user_id)
    if user.id == actor.id:
        raise Conflict("You cannot delete yourself")
    if inventory.vms_of_user(db, user.id):
        raise Conflict("User has virtual machines; delete or reassign them first")
    db.delete(user)
    db.commit()


def make_api_key(db: Session, actor: User, user_id: int) -> tuple[User, str]:
    """A new API key for the user; the plain key is returned once and only its hash is stored."""
    user = get_user(db, actor, user_id)
    key = new_api_key()
    user.api_key_hash = hash_api_key(key)
    db.commit()
    return user, key


def ensure_admin(db: Session, auth: Authenticator, login: str, email: str, password: str | None) -> str | None:
    """First start: create the admin account. Returns the generated password when one had to be made."""
    if q.count_admins(db):
        return None
    generated = None
    if password is None:
        password = generated = secrets.token_urlsafe(15)
    db.add(
        User(
            login=login,
            email=email,
            role="admin",
            first_name="Admin",
            last_name="",
            password_hash=auth.hash_password(password),
        )
    )
    db.commit()
    return generated
