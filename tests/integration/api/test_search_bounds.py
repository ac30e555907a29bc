"""backups_search bounds at and past the edges of what the database holds: a 422 naming the parameter, never a 500."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.integration.api.helpers import make_backup

URL = "/settings/backup_servers/1/backups_search.json"
BIGINT = 2**63 - 1


@pytest.mark.parametrize(
    "query,field",
    [
        (f"size[from]={BIGINT + 1}", "size[from]"),  # SQLite: "Python int too large"; PostgreSQL: bigint overflow
        (f"size[to]={10**30}", "size[to]"),
        ("size[to]=" + "9" * 5000, "size[to]"),  # int() itself refuses more than 4,300 digits
        ("period[startdate]=0000-01-01", "period[startdate]"),
        ("period[enddate]=99999-01-01", "period[enddate]"),
        ("period[startdate]=-0001-01-01", "period[startdate]"),
    ],
)
def test_out_of_range_bounds_are_422(api, query, field):
    r = api.get(f"{URL}?{query}")
    assert r.status_code == 422, r.text
    assert list(r.json()["errors"]) == [field]


def test_the_extreme_bounds_that_exist_are_answered(app, api, world):
    backup_id = make_backup(app, disk_id=world["disk_a"]["id"], size_kb=5)
    for query in (
        f"size[from]=0&size[to]={BIGINT}",
        f"size[to]={'0' * 30}{BIGINT}",  # leading zeros do not make it larger
        "period[startdate]=0001-01-01&period[enddate]=9999-12-31",  # the end date is included: its next day is not
    ):
        r = api.get(f"{URL}?{query}")
        assert r.status_code == 200, (query, r.text)
        assert [b["backup"]["id"] for b in r.json()] == [backup_id], query
    today = datetime.now(UTC).date().isoformat()
    assert api.get(f"{URL}?period[startdate]=9999-12-31").json() == []
    assert len(api.get(f"{URL}?period[enddate]={today}").json()) == 1
