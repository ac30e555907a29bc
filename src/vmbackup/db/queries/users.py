from __future__ import annotations

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from vmbackup.db.models import User


def by_login_or_email(db: Session, name: str) -> User | None:
    return db.scalars(select(User).where(or_(User.login == name, User.email == name)).limit(1)).first()


def taken(db: Session, *, login: str | None, email: str | None, except_id: int | None = None) -> list[str]:
    """Which of login/email are already used by another user."""
    out = []
    for field, value in (("login", login), ("email", email)):
        if value is None:
            continue
        col = getattr(User, field)
        q = select(func.count()).select_from(User).where(func.lower(col) == value.lower())
        if except_id is not None:
            q = q.where(User.id != except_id)
        if db.scalar(q):
            out.append(field)
    return out


def count_admins(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(User).where(User.role == "admin")) or 0
