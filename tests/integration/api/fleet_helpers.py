"""Building a fleet for API tests: hypervisors, zones and workers' heartbeats, written as the services see them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from defusedxml.ElementTree import fromstring

from vmbackup.db.models import WorkerHeartbeat


def heartbeat(app: Any, name: str, hypervisor_ids: list[int], age_seconds: float = 0, **kw: Any) -> None:
    """A worker's heartbeat row, as a worker started with ``--hypervisor`` writes it (``age_seconds`` ago)."""
    at = datetime.now(UTC) - timedelta(seconds=age_seconds)
    with app.state.sessions() as db:
        db.add(
            WorkerHeartbeat(
                name=name, host="test", pid=1, hypervisor_ids=hypervisor_ids, started_at=at, heartbeat_at=at, **kw
            )
        )
        db.commit()


def hypervisor(api: Any, **kw: Any) -> dict[str, Any]:
    return api.create("/settings/hypervisors.json", "hypervisor", **{"label": "hv1", **kw})


def zone(api: Any, **kw: Any) -> dict[str, Any]:
    return api.create("/settings/hypervisor_zones.json", "hypervisor_group", **{"label": "zone1", **kw})


XML_TYPES = {bool: "boolean", int: "integer"}


def assert_xml_typed(content: bytes, json_fields: dict[str, Any], root: str) -> Any:
    """The XML element ``root`` carries the JSON answer's fields with Rails's type attributes. Returns it."""
    doc = fromstring(content)
    element = doc if doc.tag == root else doc.find(root)
    assert element is not None, content
    for name, value in json_fields.items():
        child = element.find(name)
        assert child is not None, name
        if value is None:
            assert child.get("nil") == "true", name
        elif isinstance(value, list):
            assert child.get("type") == "array", name
        elif type(value) in XML_TYPES:
            assert child.get("type") == XML_TYPES[type(value)], name
            assert child.text == (str(value).lower() if isinstance(value, bool) else str(value)), name
        elif isinstance(value, str) and name.endswith("_at"):
            assert child.get("type") == "datetime", name
        else:
            assert child.get("type") is None and child.text == value, name
    return element
