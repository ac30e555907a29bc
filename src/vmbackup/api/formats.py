"""OnApp wire formats, in one place: root-key wrapping, JSON, and Rails-style typed XML.

Presenters hand over plain dicts of Python values (bool, int, float, str, None, datetime, list, dict); this module
decides how each looks on the wire, so no route ever builds JSON or XML itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime, tzinfo
from typing import Any
from xml.sax.saxutils import escape

from starlette.responses import Response

from vmbackup.api.text import scrub

JSON_TYPE = "application/json; charset=utf-8"  # one real client compares this string byte for byte
XML_TYPE = "application/xml; charset=utf-8"
XML_HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'

Record = Mapping[str, Any]


def plural(root: str) -> str:
    return root + "es" if root.endswith("s") else root + "s"


def singular(name: str) -> str:
    """The item name of a list called ``name``, inverting ``plural`` ("ip_addresses" -> "ip_address"); a name
    that is no plural stays as it is, as Rails's singularize leaves "virtualization"."""
    if name.endswith("sses"):
        return name[:-2]
    return name[:-1] if name.endswith("s") else name


def _ts(value: datetime, tz: tzinfo) -> str:
    # OnApp: ISO 8601, seconds precision, numeric offset, in the user's time zone.
    return value.astimezone(tz).replace(microsecond=0).isoformat()


def to_json(doc: Any, tz: tzinfo) -> bytes:
    # Datetimes are the only values json cannot encode; a `default` hook formats them as they are met, instead of
    # copying the whole document first (that copy was most of the time of large listings).
    def encode(value: Any) -> str:
        if isinstance(value, datetime):
            return _ts(value, tz)
        raise TypeError(f"cannot encode {type(value).__name__}")

    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=encode).encode()


def _xml_element(name: str, value: Any, tz: tzinfo, indent: int, out: list[str]) -> None:
    pad = "  " * indent
    if value is None:
        out.append(f'{pad}<{name} nil="true"/>')
    elif isinstance(value, bool):  # before int: bool is an int subclass
        out.append(f'{pad}<{name} type="boolean">{"true" if value else "false"}</{name}>')
    elif isinstance(value, int):
        out.append(f'{pad}<{name} type="integer">{value}</{name}>')
    elif isinstance(value, float):
        out.append(f'{pad}<{name} type="float">{value}</{name}>')
    elif isinstance(value, datetime):
        out.append(f'{pad}<{name} type="datetime">{_ts(value, tz)}</{name}>')
    elif isinstance(value, Mapping):
        out.append(f"{pad}<{name}>")
        for key, item in value.items():
            _xml_element(key, item, tz, indent + 1, out)
        out.append(f"{pad}</{name}>")
    elif isinstance(value, list | tuple):
        if not value:
            out.append(f'{pad}<{name} type="array"/>')
            return
        out.append(f'{pad}<{name} type="array">')
        item_name = singular(name)
        for item in value:
            # A nested list of OnApp roots (`"ip_addresses": [{"ip_address": {...}}]`) is, in Rails's XML, a list
            # of those elements: `<ip_addresses type="array"><ip_address><address>...`, not one wrapped twice.
            if isinstance(item, Mapping) and len(item) == 1 and item_name in item:
                item = item[item_name]
            _xml_element(item_name, item, tz, indent + 1, out)
        out.append(f"{pad}</{name}>")
    else:
        out.append(f"{pad}<{name}>{escape(str(value))}</{name}>")


def to_xml(root: str, value: Any, tz: tzinfo) -> bytes:
    out: list[str] = []
    _xml_element(root, value, tz, 0, out)
    return _well_formed(XML_HEAD + "\n".join(out) + "\n")


def _well_formed(document: str) -> bytes:
    # Text stored before api/text.py's characters were refused on input may hold some that XML 1.0 cannot carry:
    # shown as U+FFFD rather than making the whole document unreadable. One pass over the finished document (only
    # text can hold them) costs less than one per value.
    return scrub(document).encode()


def _response(fmt: str, xml_root: str, xml_value: Any, json_doc: Any, tz: tzinfo, status: int) -> Response:
    if fmt == "xml":
        return Response(to_xml(xml_root, xml_value, tz), status_code=status, headers={"content-type": XML_TYPE})
    return Response(to_json(json_doc, tz), status_code=status, headers={"content-type": JSON_TYPE})


def render(fmt: str, doc_root: str, payload: Any, tz: tzinfo, status: int = 200) -> Response:
    """Render a document whose XML root element is ``doc_root``; JSON wraps it the OnApp way."""
    return _response(fmt, doc_root, payload, _json_shape(doc_root, payload), tz, status)


def _json_shape(doc_root: str, payload: Any) -> Any:
    # Lists in JSON are arrays of objects each wrapped in its root key; single objects are wrapped once.
    if isinstance(payload, list):
        item_root = singular(doc_root)
        return [{item_root: item} for item in payload]
    return {doc_root: payload}


def render_one(fmt: str, root: str, record: Record, tz: tzinfo, status: int = 200) -> Response:
    return render(fmt, root, record, tz, status)


def render_list(fmt: str, root: str, records: Iterable[Record], tz: tzinfo) -> Response:
    return render(fmt, plural(root), list(records), tz)


def render_hash(fmt: str, data: Record, tz: tzinfo, status: int = 200) -> Response:
    """An unwrapped object (`{"version": ...}`); in XML a ``<hash>`` element, as Rails renders a Hash."""
    return _response(fmt, "hash", data, data, tz, status)


def no_content() -> Response:
    return Response(status_code=204)


def errors(
    fmt: str, status: int, messages: list[str] | Mapping[str, list[str]], headers: Mapping[str, str] | None = None
) -> Response:
    """OnApp error body: ``{"errors": [...]}`` or ``{"errors": {"field": [...]}}``; XML ``<errors><error>``."""
    if fmt == "xml":
        flat = (
            messages
            if isinstance(messages, list)
            else [f"{field} {msg}" for field, msgs in messages.items() for msg in msgs]
        )
        body = XML_HEAD + "<errors>\n" + "".join(f"  <error>{escape(m)}</error>\n" for m in flat) + "</errors>\n"
        return Response(_well_formed(body), status_code=status, headers={"content-type": XML_TYPE, **(headers or {})})
    # Field names come from the request: a lone surrogate one (from a JSON escape) has no UTF-8 form. json.dumps
    # escapes control characters itself, so only surrogates are left for scrub() to replace.
    body_json = scrub(json.dumps({"errors": messages}, ensure_ascii=False)).encode()
    return Response(body_json, status_code=status, headers={"content-type": JSON_TYPE, **(headers or {})})
