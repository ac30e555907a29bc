from __future__ import annotations

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from vmbackup.db.models import SignInName, User
from vmbackup.db.models.users import signin_name


def by_login_or_email(db: Session, name: str) -> User | None:
    # One user at most since signin_names reserves every name once; on data older than that table, where one
    # user's login may be another's email, the older account wins, as the migration that built the table decided.
    return db.scalars(
        select(User).where(or_(User.login == name, User.email == name)).order_by(User.id).limit(1)
    ).first()


def taken(db: Session, *, login: str | None, email: str | None, except_id: int | None = None) -> list[str]:
    """Which of login/email another user already signs in with, as its login or as its email, in any case."""
    out = []
    for field, value in (("login", login), ("email", email)):
        if value is None:
            continue
        q = select(SignInName.user_id).where(SignInName.name == signin_name(value))
        if except_id is not None:
            q = q.where(SignInName.user_id != except_id)
        if db.scalar(q.limit(1)) is not None:
            out.append(field)
    return out


def count_admins(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(User).where(User.role == "admin")) or 0
