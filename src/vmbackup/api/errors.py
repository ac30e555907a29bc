"""The one place where errors become HTTP answers in OnApp form (``{"errors": ...}``)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from vmbackup.api import formats
from vmbackup.errors import TooManyAttempts, Unauthorized, VmbackupError

log = logging.getLogger(__name__)

_HTTP_MESSAGES = {404: "Resource not found", 405: "Method not allowed"}


def _fmt(request: Request) -> str:
    return getattr(request.state, "fmt", "json")


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


def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return formats.errors(_fmt(request), 500, ["We're sorry, but something went wrong."])


def install(app: FastAPI) -> None:
    app.add_exception_handler(VmbackupError, domain_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)
