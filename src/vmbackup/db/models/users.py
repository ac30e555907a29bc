from __future__ import annotations

from typing import Any

from sqlalchemy import ForeignKey, Integer, String, event, inspect
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from vmbackup.db.base import NEVER_REUSE_IDS, Base, Timestamps, new_identifier


def signin_name(value: str) -> str:
    """The form in which a login or email is reserved: names differing only in case are one name."""
    return value.lower()


class SignInName(Base):
    """Every name a user signs in with (login and email), one row per name (``signin_name``).

    Why a table: sign-in accepts a login or an email, so one user's login must not be another's email, and two
    unique columns cannot say that. The primary key here can, on SQLite and PostgreSQL alike, also between two
    requests racing each other. Rows are kept in step with ``users`` in the same flush (``_reserve_names``)."""

    __tablename__ = "signin_names"

    # Twice a column's 255: lower() lengthens at most one character (U+0130) into two.
    name: Mapped[str] = mapped_column(String(512), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)


class User(Timestamps, Base):
    __tablename__ = "users"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    identifier: Mapped[str] = mapped_column(String(14), default=new_identifier)
    login: Mapped[str] = mapped_column(String(255), unique=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    first_name: Mapped[str | None] = mapped_column(String(255))
    last_name: Mapped[str | None] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="user")  # user | admin
    status: Mapped[str] = mapped_column(String(16), default="active")
    time_zone: Mapped[str] = mapped_column(String(64), default="UTC")
    password_hash: Mapped[str] = mapped_column(String(255))
    # sha256 hex of the API key: keys are 40 random characters, so a fast hash is enough (no dictionary to try).
    api_key_hash: Mapped[str | None] = mapped_column(String(64))
    # Backup space sold to the user (OnApp's backup-space product), in GB; None: no limit. Takes are checked
    # against the space their stored backups use (services/space.py).
    backup_space_limit: Mapped[int | None] = mapped_column(Integer)

    signin_names: Mapped[list[SignInName]] = relationship(cascade="all, delete-orphan", passive_deletes=True)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@event.listens_for(Session, "before_flush")
def _reserve_names(session: Session, _context: Any, _instances: Any) -> None:
    """Bring each new or renamed user's SignInName rows in line with its login and email, in the same flush, so
    every way of writing a user (services, first start, tests) reserves its names; a name another user holds then
    fails the flush with an IntegrityError (services/users.py turns that into a field error)."""
    for user in [*session.new, *session.dirty]:
        if not isinstance(user, User):
            continue
        state = inspect(user)
        if not state.pending and not (
            state.attrs.login.history.has_changes() or state.attrs.email.history.has_changes()
        ):
            continue
        wanted = {signin_name(user.login), signin_name(user.email)}
        with session.no_autoflush:
            kept = [row for row in user.signin_names if row.name in wanted]
            held = {row.name for row in kept}
            user.signin_names = kept + [SignInName(name=name) for name in sorted(wanted - held)]
