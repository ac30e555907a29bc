"""api/errors.py: which foreign errors stand for a domain error, and what an unexpected one leaves in the log."""

from __future__ import annotations

import errno
import logging
import sqlite3

import psycopg.errors
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import IntegrityError, OperationalError

from vmbackup.api import errors
from vmbackup.errors import DatabaseFull


def _sqlite_error(message: str, code: int) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError(message)
    exc.sqlite_errorcode = code
    return exc


@pytest.mark.parametrize(
    "foreign",
    [
        OperationalError("INSERT", {}, _sqlite_error("database or disk is full", sqlite3.SQLITE_FULL)),
        OperationalError("INSERT", {}, psycopg.errors.DiskFull("could not extend file")),
        OSError(errno.ENOSPC, "No space left on device"),
    ],
    ids=["sqlite full", "postgresql disk full", "ENOSPC"],
)
def test_out_of_space_is_database_full(foreign):
    known = errors.translate(foreign)
    assert isinstance(known, DatabaseFull)
    assert known.status == 507 and "nothing was changed" in known.message


@pytest.mark.parametrize(
    "foreign",
    [
        OperationalError("SELECT", {}, _sqlite_error("database is locked", sqlite3.SQLITE_BUSY)),
        OperationalError("SELECT", {}, psycopg.errors.AdminShutdown("terminating connection")),
        IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed")),
        OSError(errno.EIO, "Input/output error"),
        RuntimeError("a bug"),
    ],
)
def test_other_foreign_errors_stay_unexpected(foreign):
    assert errors.translate(foreign) is None


def _app(exc: Exception) -> FastAPI:
    app = FastAPI()
    router = APIRouter()

    @router.get("/boom")
    def boom() -> None:  # sync, as the real handlers: it runs in a worker thread
        raise exc

    app.include_router(router)
    errors.install(app)
    return app


def test_an_unexpected_error_is_logged_with_its_traceback(caplog):
    client = TestClient(_app(RuntimeError("the real cause")), raise_server_exceptions=False)
    with caplog.at_level(logging.ERROR, logger="vmbackup"):
        r = client.get("/boom")
    assert r.status_code == 500
    assert r.json() == {"errors": ["We're sorry, but something went wrong."]}
    (record,) = [rec for rec in caplog.records if rec.name == "vmbackup.api.errors"]
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)
    assert "RuntimeError: the real cause" in caplog.text
    assert "NoneType: None" not in caplog.text


def test_a_full_database_is_a_507_with_the_reason_and_logged(caplog):
    foreign = OperationalError("INSERT", {}, _sqlite_error("database or disk is full", sqlite3.SQLITE_FULL))
    client = TestClient(_app(foreign))
    with caplog.at_level(logging.ERROR, logger="vmbackup"):
        r = client.get("/boom")
    assert r.status_code == 507
    assert r.json() == {"errors": [DatabaseFull().message]}
    assert "GET /boom refused" in caplog.text and "database or disk is full" in caplog.text
