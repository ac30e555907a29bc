"""Who may see and do what. A user's view is their own objects; someone else's answers exactly like a missing one."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy.orm import Session

from vmbackup.db.base import Base
from vmbackup.db.models import User
from vmbackup.errors import Forbidden, NotFound

T = TypeVar("T", bound=Base)


def require_admin(actor: User) -> None:
    if not actor.is_admin:
        raise Forbidden()


def owner_scope(actor: User) -> int | None:
    """The owner id to filter lists by: None for an admin (sees all)."""
    return None if actor.is_admin else actor.id


def find(db: Session, model: type[T], id_: int, label: str) -> T:
    obj = db.get(model, id_)
    if obj is None:
        raise NotFound(f"{label} not found")
    return obj


def find_owned(db: Session, actor: User, model: type[T], id_: int, label: str, owner_id: Any = None) -> T:
    """``model`` ``id_`` if the actor may see it; ``owner_id(obj)`` gives its owner (default ``obj.user_id``)."""
    obj = db.get(model, id_)
    if obj is None:
        raise NotFound(f"{label} not found")
    owner = owner_id(obj) if owner_id else obj.user_id  # type: ignore[attr-defined]
    if not actor.is_admin and owner != actor.id:
        raise NotFound(f"{label} not found")
    return obj


def apply(obj: Base, changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        setattr(obj, key, value)
