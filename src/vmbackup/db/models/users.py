from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from vmbackup.db.base import NEVER_REUSE_IDS, Base, Timestamps, new_identifier


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

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"
