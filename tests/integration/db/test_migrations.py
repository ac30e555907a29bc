"""Upgrading an empty database with the migrations yields exactly the models' schema, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from vmbackup.db import models  # noqa: F401
from vmbackup.db.base import Base
from vmbackup.db.session import make_engine


def test_migrations_reproduce_the_models(database_url):
    engine = make_engine(database_url)  # the fixture's database was built by the migrations alone
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []
