from __future__ import annotations

from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from vmbackup.db.base import Base

T = TypeVar("T", bound=Base)


def get(db: Session, model: type[T], id_: int) -> T | None:
    return db.get(model, id_)


def all_of(db: Session, model: type[T]) -> list[T]:
    return list(db.scalars(select(model).order_by(model.id)))  # type: ignore[attr-defined]
