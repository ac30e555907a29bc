"""Fuzzing the whole API from its OpenAPI document: no answer is a 5xx, every error is in OnApp form.

Schemathesis generates valid (positive) and invalid (negative) requests for every operation, sent in-process to
the ASGI app as the admin. Each positive body is also sent as Rails-style XML to the ``.xml`` form of the path,
so the XML reader sees the same schema-shaped data. Hand-written XML cases follow at the end.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hyp_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.conftest import ADMIN
from tests.integration.api.helpers import make_backup
from tests.security.conftest import basic
from vmbackup.api import formats

AUTH = basic(*ADMIN)
FUZZER_ID = 1  # the admin seeded on first start
JSON_TYPE = "application/json; charset=utf-8"
XML_TYPE = "application/xml; charset=utf-8"
_JSON = {"Content-Type": "application/json"}


@dataclass
class Tally:
    cases: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def note(self, kind: str, where: str, status: int, ctype: str | None, body: bytes) -> None:
        self.cases[kind] += 1
        self.statuses[status] += 1
        problem = answer_problem(status, ctype, body, xml=kind == "xml")
        if problem and len(self.problems) < 20:
            self.problems.append(f"{where} -> {status}: {problem}: {body[:200]!r}")


def answer_problem(status: int, ctype: str | None, body: bytes, *, xml: bool = False) -> str | None:
    """What is wrong with an answer, or None: 5xx, a wrong content type, or an error body not in OnApp form."""
    if status >= 500:
        return "server error"
    if status == 204:
        return "body on 204" if body else None
    if ctype != (XML_TYPE if xml else JSON_TYPE):
        return f"content type {ctype!r}"
    if status < 400:
        return None
    if xml:
        text = body.decode()
        ok = "<errors>" in text and ("<error>" in text) and "</errors>" in text
        return None if ok else "not <errors><error>...</error></errors>"
    doc = json.loads(body)
    errors = doc.get("errors") if isinstance(doc, dict) and set(doc) == {"errors"} else None
    if isinstance(errors, list) and errors and all(isinstance(m, str) for m in errors):
        return None
    if isinstance(errors, dict) and errors and all(isinstance(v, list) and v for v in errors.values()):
        return None
    return 'not {"errors": [...]} or {"errors": {"field": [...]}}'


def seed(app: Any, api: Any) -> None:
    """Objects for generated ids to find (ids start at 1), so cases reach past the 404s."""
    alice = api.user("alice")
    tpl = api.template()
    ds = api.data_store()
    vm = api.vm(alice["id"], tpl["id"])
    disk = api.disk(vm["id"], ds["id"], image_path="/nonexistent/vmbackup-fuzz.img")
    make_backup(app, disk_id=disk["id"])
    make_backup(app, vm_id=vm["id"])
    api.post(f"/settings/disks/{disk['id']}/autobackup_enable.json")


def fuzz(app: Any, examples: int) -> Tally:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    tally = Tally()
    client = TestClient(app, raise_server_exceptions=False)
    operations = [result.ok() for result in schema.get_all_operations()]
    # Deletes last, so the seeded objects are there for the other operations' cases.
    operations.sort(key=lambda op: op.method.upper() == "DELETE")
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # Unsatisfiable: nothing to make invalid (no parameters, no body); the positive cases cover it.
            with contextlib.suppress(Unsatisfiable):
                _runner(operation, mode, examples, tally, client)()
    return tally


def _runner(operation: Any, mode: GenerationMode, examples: int, tally: Tally, client: TestClient) -> Any:
    @hyp_settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases on every run
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        if case.path_parameters and case.path_parameters.get("user_id") == FUZZER_ID:
            # The fuzzer's own account (a new password or API key would lock it out): aim at alice instead.
            case.path_parameters["user_id"] = FUZZER_ID + 1
        response = case.call(headers=AUTH)
        ctype = (response.headers.get("content-type") or [None])[0]
        tally.note(mode.value, case.as_curl_command(), response.status_code, ctype, response.content)
        body = case.body if isinstance(case.body, dict) else None
        if mode is GenerationMode.POSITIVE and body and len(body) == 1:
            # The same attributes as Rails XML, to the .xml form of the path.
            ((root, inner),) = body.items()
            xml = formats.to_xml(root, inner, UTC)
            r = client.request(
                case.method,
                case.formatted_path + ".xml",
                params=case.query,
                content=xml,
                headers={**AUTH, "Content-Type": "application/xml"},
            )
            where = f"{case.method} {case.formatted_path}.xml {xml[:300]!r}"
            tally.note("xml", where, r.status_code, r.headers.get("content-type"), r.content)

    return run


def _check(tally: Tally, minimum: int) -> None:
    print(f"\nfuzz cases: {dict(tally.cases)} statuses: {dict(sorted(tally.statuses.items()))}")
    assert sum(tally.cases.values()) >= minimum
    assert not {401, 429} & set(tally.statuses), "the fuzzer lost its credentials: later cases tested nothing"
    assert not tally.problems, "\n".join(tally.problems)


def test_openapi_document_describes_every_route(idle_api):
    doc = idle_api.get("/openapi.json").json()
    operations = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert len(operations) >= 80
    for path, item in doc["paths"].items():
        for method, op in item.items():
            body = op.get("requestBody")
            if method in ("put",) or (method == "post" and body):
                schema = body["content"]["application/json"]["schema"]
                # Our body reader takes the attributes under one root key; the document must say so.
                assert schema["required"] == list(schema["properties"]), (method, path)
                assert schema["properties"][schema["required"][0]].get("additionalProperties") is False


def test_fuzz_api_no_server_errors_and_onapp_errors(idle_app, idle_api, record_property):
    seed(idle_app, idle_api)
    tally = fuzz(idle_app, examples=6)
    record_property("fuzz_cases", sum(tally.cases.values()))
    _check(tally, minimum=800)


@pytest.mark.slow
def test_fuzz_api_thoroughly(idle_app, idle_api, record_property):
    seed(idle_app, idle_api)
    tally = fuzz(idle_app, examples=150)
    record_property("fuzz_cases", sum(tally.cases.values()))
    _check(tally, minimum=10_000)


# Hand-written XML: every body-taking operation gets each of these, on the .xml path.
XML_BODIES = {
    "wrong root": b"<nothing><label>x</label></nothing>",
    "empty root": b"<ROOT/>",
    "nil root": b'<ROOT nil="true"/>',
    "text root": b"<ROOT>just text</ROOT>",
    "array root": b'<ROOT type="array"><item>1</item><item>2</item></ROOT>',
    "unknown child": b"<ROOT><colour>red</colour></ROOT>",
    "bad integer": b'<ROOT><label>x</label><disk_size type="integer">lots</disk_size></ROOT>',
    "huge integer": b'<ROOT><user_id type="integer">' + b"9" * 400 + b"</user_id></ROOT>",
    "negative integer": b'<ROOT><disk_size type="integer">-1</disk_size><user_id type="integer">-5</user_id></ROOT>',
    "bad boolean": b'<ROOT><enabled type="boolean">maybe</enabled></ROOT>',
    "nested object": b"<ROOT><label><a><b>deep</b></a></label></ROOT>",
    "repeated child": b"<ROOT><label>a</label><label>b</label></ROOT>",
    "nil field": b'<ROOT><label nil="true"/></ROOT>',
    "unicode": "<ROOT><label>\u00e9t\u00e9 \U0001f600 \u202e</label><note>\u0000?</note></ROOT>".encode(),
    "control char": b"<ROOT><label>a\x01b</label></ROOT>",
    "malformed": b"<ROOT><label>x</ROOT>",
    "not xml": b"<<<>>>",
    "latin-1 declared": '<?xml version="1.0" encoding="ISO-8859-1"?><ROOT><label>caf\u00e9</label></ROOT>'.encode(
        "latin-1"
    ),
    "bad encoding declared": b'<?xml version="1.0" encoding="klingon"?><ROOT/>',
    "namespaced": b'<x:ROOT xmlns:x="urn:x"><x:label>x</x:label></x:ROOT>',
    "processing instruction": b'<?xml-stylesheet href="file:///etc/passwd"?><ROOT><label>x</label></ROOT>',
    "cdata": b"<ROOT><label><![CDATA[<b>x</b>]]></label></ROOT>",
    "dtd": b"<!DOCTYPE ROOT [<!ELEMENT ROOT ANY>]><ROOT><label>x</label></ROOT>",
    "external entity": b'<!DOCTYPE ROOT [<!ENTITY x SYSTEM "file:///etc/passwd">]><ROOT><label>&x;</label></ROOT>',
    "parameter entity": b'<!DOCTYPE ROOT [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><ROOT/>',
    "entity bomb": b'<!DOCTYPE ROOT [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><ROOT><label>&c;</label></ROOT>',
    "deep nesting": b"<ROOT>" + b"<a>" * 200 + b"x" + b"</a>" * 200 + b"</ROOT>",
    "very deep nesting": b"<ROOT>" + b"<a>" * 100_000 + b"</a>" * 100_000 + b"</ROOT>",  # was a RecursionError
    "wide": b"<ROOT>" + b"".join(b"<f%d>x</f%d>" % (i, i) for i in range(3000)) + b"</ROOT>",
}


def _body_operations(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    ops = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            body = op.get("requestBody")
            if body:
                root = body["content"]["application/json"]["schema"]["required"][0]
                ops.append((method.upper(), path, root))
    return ops


def test_handwritten_xml_bodies(idle_app, idle_api, record_property):
    seed(idle_app, idle_api)
    ops = _body_operations(idle_api.get("/openapi.json").json())
    assert len(ops) >= 15
    tally = Tally()
    client = TestClient(idle_app, raise_server_exceptions=False)
    passwd = Path("/etc/passwd").read_bytes().split(b"\n")[0]
    for method, path, root in ops:
        url = re.sub(r"\{[^}]+\}", "1", path)  # the seeded objects have id 1
        for name, raw in XML_BODIES.items():
            body = raw.replace(b"ROOT", root.encode())
            r = client.request(method, url + ".xml", content=body, headers={**AUTH, "Content-Type": "application/xml"})
            tally.note("xml", f"{method} {url} [{name}]", r.status_code, r.headers.get("content-type"), r.content)
            assert passwd not in r.content, f"{method} {url} [{name}] echoed /etc/passwd"
    record_property("xml_cases", sum(tally.cases.values()))
    _check(tally, minimum=len(ops) * len(XML_BODIES))


def _string_fields(op: dict[str, Any]) -> tuple[str, list[str]]:
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    root = schema["required"][0]
    props = schema["properties"][root]["properties"]
    names = [
        name
        for name, prop in props.items()
        if prop.get("type") == "string" or any(alt.get("type") == "string" for alt in prop.get("anyOf", []))
    ]
    return root, names


def test_unstorable_text_in_every_string_field_of_every_body_is_422(idle_app, idle_api):
    """U+0000 (PostgreSQL text refuses it), a C0 control (XML 1.0 cannot carry it) and a lone surrogate (no UTF-8
    form), sent as JSON escapes in each string field the OpenAPI document names: each is a 422 naming the field,
    on SQLite and PostgreSQL alike."""
    seed(idle_app, idle_api)
    doc = idle_api.get("/openapi.json").json()
    client = TestClient(idle_app, raise_server_exceptions=False)
    checked = 0
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if not op.get("requestBody"):
                continue
            root, names = _string_fields(op)
            url = re.sub(r"\{user_id\}", str(FUZZER_ID + 1), path)
            url = re.sub(r"\{[^}]+\}", "1", url)
            for name in names:
                for escape, code in (("\\u0000", "U+0000"), ("\\u001b", "U+001B"), ("\\udfff", "U+DFFF")):
                    raw = f'{{"{root}": {{"{name}": "x{escape}y"}}}}'.encode()
                    r = client.request(method, url + ".json", content=raw, headers={**AUTH, **_JSON})
                    where = f"{method.upper()} {url} {name} {code}"
                    assert r.status_code == 422, (where, r.text)
                    assert r.json() == {"errors": {name: [f"contains a character that cannot be stored ({code})"]}}
                    checked += 1
    assert checked >= 3 * 60
