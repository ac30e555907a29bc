"""OnApp URL tolerance and body limits, as a plain ASGI middleware (cheap on the hot path).

- ``/backups/5.json``, ``/transactions.json/page/2``: the ``.json``/``.xml`` suffix chooses the format and is
  removed before routing; without one the Accept header decides, default JSON.
- ``//settings//disks/5/`` is routed as ``/settings/disks/5`` (the PHP wrapper sends doubled slashes).
- Bodies larger than ``max_body_bytes`` are refused (422): with a Content-Length, before anything is read; chunked,
  as soon as reading passes the limit.
- A path or query string holding a character no text of ours may hold (api/text.py: U+0000 and other controls) is
  refused (422) before routing, for every route at once; bodies are checked field by field in api/body.py.

It runs in front of FastAPI's own middleware (api/app.py ``Service``), so it raises nothing the framework would
have to catch: a chunked body over the limit raises ``BodyTooLarge`` inside the handler that reads it.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vmbackup.api import formats, text
from vmbackup.errors import Invalid

_SUFFIX = re.compile(r"\.(json|xml)(?=/|$)")
_SLASHES = re.compile(r"/{2,}")


def negotiate(path: str, accept: str) -> tuple[str, str]:
    """Return (routing path, format)."""
    if "//" in path:
        path = _SLASHES.sub("/", path)
    fmt = None
    match = _SUFFIX.search(path)
    if match:
        fmt = match.group(1)
        path = path[: match.start()] + path[match.end() :]
    if len(path) > 1:
        path = path.rstrip("/")
    if fmt is None:
        fmt = "xml" if "xml" in accept and "json" not in accept else "json"
    return path, fmt


class BodyTooLarge(Invalid):
    """Raised while a handler reads a chunked body past the limit; api/errors.py answers it like any 422."""

    def __init__(self, limit: int) -> None:
        super().__init__(_too_large_message(limit))


def _too_large_message(limit: int) -> str:
    return f"Request body is larger than {limit} bytes"


class OnAppMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        accept, length, chunked = b"", b"0", False
        for name, value in scope["headers"]:
            if name == b"accept":
                accept = value
            elif name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
        path, fmt = negotiate(scope["path"], accept.decode("latin-1"))
        scope = dict(scope, path=path, raw_path=path.encode())
        scope.setdefault("state", {})["fmt"] = fmt
        refused = _unstorable_in_url(path, scope.get("query_string", b""))
        if refused is not None:
            await _answer(formats.errors(fmt, 422, refused), send)
            return
        if not length.isdigit() or int(length) > self.max_body:
            await self._too_large(fmt, send)
            return
        if not chunked:
            # The server delivers exactly Content-Length bytes (or none without it), already checked above.
            await self.app(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        await self.app(scope, limited_receive, send)

    async def _too_large(self, fmt: str, send: Send) -> None:
        await _answer(formats.errors(fmt, 422, [_too_large_message(self.max_body)]), send)


def _unstorable_in_url(path: str, query: bytes) -> list[str] | dict[str, list[str]] | None:
    """The error messages for a path (already percent-decoded by the server) or query string holding a character
    api/text.py refuses, or None. A query parameter is named, as body fields are."""
    char = text.unstorable(path)
    if char:
        return [f"The path {text.MESSAGE} ({char})"]
    if not query:
        return None
    fields: dict[str, list[str]] = {}
    # Decoded as Starlette decodes it for the handlers (UTF-8, bad bytes replaced), so both see the same text.
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        message = text.refusal(name) or text.refusal(value)
        if message:
            fields.setdefault(text.scrub(name) or "base", []).append(message)
    return fields or None


async def _answer(response: Any, send: Send) -> None:
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Any:
    return {"type": "http.disconnect"}
