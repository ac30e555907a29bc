"""The one place where errors become HTTP answers in OnApp form (``{"errors": ...}``).

Domain errors (vmbackup/errors.py) carry their status. The few foreign errors a request can meet for a reason the
client should hear (a database out of space) are translated to domain errors here, in ``translate``; anything else
unexpected is a logged 500 with its traceback.
"""

from __future__ import annotations

import errno
import logging
import sqlite3

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from vmbackup.api import formats
from vmbackup.errors import DatabaseFull, TooManyAttempts, Unauthorized, VmbackupError

log = logging.getLogger(__name__)

_HTTP_MESSAGES = {404: "Resource not found", 405: "Method not allowed"}
_PG_DISK_FULL = "53100"  # SQLSTATE disk_full


def _fmt(request: Request) -> str:
    return getattr(request.state, "fmt", "json")


def translate(exc: BaseException) -> VmbackupError | None:
    """The domain error a foreign exception stands for, or None when it is a bug (or an outage) to log as such."""
    if isinstance(exc, OperationalError):
        orig = exc.orig
        # SQLite says "database or disk is full" (SQLITE_FULL) for ENOSPC on the database, journal or WAL file.
        if isinstance(orig, sqlite3.OperationalError) and orig.sqlite_errorcode == sqlite3.SQLITE_FULL:
            return DatabaseFull()
        if getattr(orig, "sqlstate", None) == _PG_DISK_FULL:
            return DatabaseFull("The database server is out of disk space: nothing was changed.")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return DatabaseFull()
    return None


def domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, VmbackupError)
    headers = {"WWW-Authenticate": 'Basic realm="vmbackup"'} if isinstance(exc, Unauthorized) else None
    if isinstance(exc, TooManyAttempts):
        headers = {"Retry-After": str(exc.retry_after)}
    messages = exc.fields if exc.fields else [exc.message]
    return formats.errors(_fmt(request), exc.status, messages, headers)


def validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # A path id that is not a number names no object: 404, as for an unknown id. Query problems are 422.
    if any(err["loc"] and err["loc"][0] == "path" for err in exc.errors()):
        return formats.errors(_fmt(request), 404, ["Resource not found"])
    fields: dict[str, list[str]] = {}
    for err in exc.errors():
        fields.setdefault(".".join(str(p) for p in err["loc"][1:]) or "base", []).append(err["msg"])
    return formats.errors(_fmt(request), 422, fields)


def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message = _HTTP_MESSAGES.get(exc.status_code, str(exc.detail))
    return formats.errors(_fmt(request), exc.status_code, [message], getattr(exc, "headers", None))


def foreign_error(request: Request, exc: Exception) -> Response:
    """A foreign error that may stand for a domain error (see ``translate``); otherwise a 500 like any other."""
    known = translate(exc)
    if known is None:
        return unexpected_error(request, exc)
    # The operator must hear of it, with the database's own words; the client gets the reason, not the details.
    log.error("%s %s refused: %s (%s)", request.method, request.url.path, known.message, exc)
    return domain_error(request, known)


def unexpected_error(request: Request, exc: Exception) -> Response:
    # exc_info given, not taken from the context: a sync handler runs in a worker thread, outside the `except`
    # that caught the error, where log.exception found no exception and logged "NoneType: None".
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return formats.errors(_fmt(request), 500, ["We're sorry, but something went wrong."])


def install(app: FastAPI) -> None:
    app.add_exception_handler(VmbackupError, domain_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(OperationalError, foreign_error)
    app.add_exception_handler(OSError, foreign_error)
    app.add_exception_handler(Exception, unexpected_error)
