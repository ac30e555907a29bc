"""Request bodies: JSON or XML, size- and depth-limited, unwrapped from their OnApp root key, then validated.

FastAPI's own body handling knows neither XML nor OnApp's root keys nor its error shape, so bodies are read here
and validated with the resource's pydantic model; every failure becomes an ``Invalid`` (422) naming the problem.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any, ClassVar, TypeVar

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring
from fastapi import Depends, Request
from pydantic import BaseModel, ConfigDict, ValidationError

from vmbackup.api import text
from vmbackup.errors import Invalid

MAX_DEPTH = 32

M = TypeVar("M", bound="InputModel")


class InputModel(BaseModel):
    """Base of every request schema: unknown keys are refused, read-only keys a client echoes back are dropped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    # Fields clients send back unchanged after loading an object (the PHP wrapper does): ignored, not refused.
    read_only: ClassVar[frozenset[str]] = frozenset({"id", "identifier", "created_at", "updated_at"})


# A JSON string, escapes included; one left unterminated runs to the end of the body. Every part after the opening
# quote is optional and possessive, so a string that starts always matches and is never re-scanned: one pass over
# the body, whatever its shape. (The earlier pattern had to find the closing quote, so on an unterminated string
# the search restarted at every later quote and rescanned to the end: quadratic, 20 s for a 60 KB body of \".)
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.?)*+"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 / -1 as signed bytes


def _json_too_deep(raw: bytes) -> bool:
    """Measure nesting on the raw text, before parsing: json.loads would hit Python's recursion limit on deep
    input, and a RecursionError leaves CPython 3.11 in a state where later parsing can fail (seen in tests).

    Linear and without a Python-level loop (a 1 MiB body of any shape takes ~0.1 s): strings are cut out, the
    brackets left become +1/-1 and the deepest point is the largest running sum. Outside strings it sees the
    brackets json.loads would, up to the first error json.loads would stop at."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return False
    steps = _JSON_STRING.sub(b"", raw).translate(_DEPTH_STEP, _NOT_BRACKETS)
    return max(accumulate(memoryview(steps).cast("b")), default=0) > MAX_DEPTH


def _xml_depth(root: Any) -> int:
    deepest, stack = 0, [(root, 1)]
    while stack:
        el, level = stack.pop()
        deepest = max(deepest, level)
        if level <= MAX_DEPTH:
            stack.extend((child, level + 1) for child in el)
    return deepest


def _from_xml_element(el: Any) -> Any:
    if el.get("nil") == "true":
        return None
    kind = el.get("type")
    children = list(el)
    if kind == "array":
        return [_from_xml_element(c) for c in children]
    if children:
        return {c.tag: _from_xml_element(c) for c in children}
    text = (el.text or "").strip()
    if kind == "integer" and text.isascii() and text.lstrip("-").isdigit():
        return int(text)
    if kind == "boolean" and text in {"true", "false"}:
        return text == "true"
    return text  # anything else stays text; the model decides if it fits


def parse(raw: bytes, content_type: str) -> Any:
    """Decode a body to Python values; an empty body is ``None``."""
    if not raw.strip():
        return None
    looks_xml = "xml" in content_type or raw.lstrip().startswith(b"<")
    if looks_xml:
        try:
            # No client needs a DTD; refusing them all also rules out entity tricks defusedxml would catch later.
            root = fromstring(raw, forbid_dtd=True)
        except (ParseError, DefusedXmlException, LookupError) as exc:  # LookupError: unknown declared encoding
            raise Invalid(f"Malformed XML body: {exc}") from None
        if _xml_depth(root) > MAX_DEPTH:  # before the recursive conversion, which deep nesting would overflow
            raise Invalid(f"Body nested deeper than {MAX_DEPTH} levels")
        value = {root.tag: _from_xml_element(root)}
        return value
    if _json_too_deep(raw):
        raise Invalid(f"Body nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise Invalid(f"Malformed JSON body: {exc}") from None


def unwrap(value: Any, root: str) -> dict[str, Any]:
    """The object under the root key; ``None``/``[]`` under it (PHP's empty array) means no attributes."""
    if value is None:
        return {}
    if not isinstance(value, dict) or root not in value:
        raise Invalid(fields={root: ["is missing: send the attributes inside a root key"]})
    inner = value[root]
    if inner is None or inner == [] or inner == "":
        return {}
    if not isinstance(inner, dict):
        raise Invalid(fields={root: ["must be an object"]})
    return inner


def refuse_unstorable(attributes: dict[str, Any]) -> None:
    """Refuse (422, naming each field) any text in the attributes, at any depth, that api/text.py says cannot be
    stored. Only JSON can bring such text (as ``\\u0000`` escapes); the XML parser already refuses it."""
    fields: dict[str, list[str]] = {}
    stack: list[tuple[str, Any]] = [(str(k), v) for k, v in attributes.items()]
    while stack:
        where, value = stack.pop()
        # A key is text too (echoed in error messages): named with the characters replaced.
        message = text.refusal(where) or (text.refusal(value) if isinstance(value, str) else None)
        if message:
            fields.setdefault(text.scrub(where), []).append(message)
        elif isinstance(value, dict):
            stack.extend((f"{where}.{k}", v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{where}.{i}", v) for i, v in enumerate(value))
    if fields:
        raise Invalid(fields=dict(sorted(fields.items())))


def _messages(exc: ValidationError) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "base"
        if err["type"] == "missing":
            msg = "can't be blank"
        elif err["type"] == "extra_forbidden":
            msg = "is not a known attribute"
        else:
            msg = err["msg"]
        out.setdefault(field, []).append(msg)
    return out


def validate(model: type[M], data: dict[str, Any]) -> M:
    cleaned = {k: v for k, v in data.items() if k not in model.read_only}
    refuse_unstorable(cleaned)  # after dropping what is ignored: an echoed read-only value is not the caller's
    try:
        return model.model_validate(cleaned)
    except ValidationError as exc:
        raise Invalid(fields=_messages(exc)) from None


async def read(request: Request, root: str, model: type[M]) -> M:
    raw = await request.body()
    return validate(model, unwrap(parse(raw, request.headers.get("content-type", "")), root))


def body(root: str, model: type[M]) -> Any:
    """Dependency: the validated ``model`` read from the ``root`` key of the request body."""

    async def dependency(request: Request) -> M:
        return await read(request, root, model)

    return Depends(dependency)


def openapi_body(root: str, model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` describing the wrapped body, since the body is not read through FastAPI."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    wrapped = {"type": "object", "properties": {root: schema}, "required": [root]}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": wrapped}}}}


async def read_lenient(request: Request, root: str, *names: str) -> dict[str, Any]:
    """The attributes ``names`` under ``root`` if the body has them, else ``{}``: for actions whose body real
    clients send empty, as ``{"backup": []}``, or left over from their previous request. Only unparseable bodies
    and unstorable text in the attributes taken are refused; everything else in the body is ignored."""
    value = parse(await request.body(), request.headers.get("content-type", ""))
    inner = value.get(root) if isinstance(value, dict) else None
    if not isinstance(inner, dict):
        return {}
    taken = {name: inner[name] for name in names if name in inner}
    refuse_unstorable(taken)
    return taken
