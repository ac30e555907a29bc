"""Every value a request schema accepts fits the column it is stored in, on PostgreSQL too.

SQLite stores a 300-character string in a VARCHAR(32) and a 2**40 in an INTEGER without a word; PostgreSQL refuses
both, and the refusal was a 500 (found by running the fuzzing suite on PostgreSQL). So each schema field's bounds
are checked here against the column of the same name.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import BigInteger, Integer, String

from vmbackup.api import schemas
from vmbackup.api.body import InputModel
from vmbackup.db import models

TARGETS: dict[type[InputModel], type[Any]] = {
    schemas.UserCreate: models.User,
    schemas.UserUpdate: models.User,
    schemas.TemplateCreate: models.ImageTemplate,
    schemas.DataStoreCreate: models.DataStore,
    schemas.DataStoreUpdate: models.DataStore,
    schemas.BackupServerCreate: models.BackupServer,
    schemas.BackupServerUpdate: models.BackupServer,
    schemas.VirtualMachineCreate: models.VirtualMachine,
    schemas.VirtualMachineUpdate: models.VirtualMachine,
    schemas.DiskCreate: models.Disk,
    schemas.DiskUpdate: models.Disk,
    schemas.BackupNote: models.Backup,
    schemas.PresetCreate: models.AutobackupPreset,
    schemas.PresetUpdate: models.AutobackupPreset,
    schemas.ScheduleCreate: models.Schedule,
    schemas.ScheduleUpdate: models.Schedule,
    schemas.ZoneCreate: models.BackupServerZone,
    schemas.ZoneUpdate: models.BackupServerZone,
    schemas.HypervisorCreate: models.Hypervisor,
    schemas.HypervisorUpdate: models.Hypervisor,
    schemas.HypervisorZoneCreate: models.HypervisorZone,
    schemas.HypervisorZoneUpdate: models.HypervisorZone,
    schemas.BackupServerJoinCreate: models.BackupServerJoin,
    schemas.IpAddressCreate: models.IpAddress,
}
LIMITS = {Integer: 2**31 - 1, BigInteger: 2**63 - 1}


def _options(prop: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]


def test_every_request_schema_is_checked():
    found = {cls for cls in vars(schemas).values() if isinstance(cls, type) and issubclass(cls, InputModel)}
    # BackupConvert's label becomes a template's label (checked through TemplateCreate's).
    assert found - {InputModel, schemas.BackupConvert, schemas._TimeZone} == set(TARGETS)


@pytest.mark.parametrize("schema", TARGETS, ids=lambda s: s.__name__)
def test_schema_bounds_fit_the_columns(schema):
    columns = TARGETS[schema].__table__.columns
    props = schema.model_json_schema()["properties"]
    checked = 0
    for name, prop in props.items():
        if name not in columns:
            continue  # not stored as given (password, target_id...)
        column = columns[name].type
        for option in _options(prop):
            if isinstance(column, String) and column.length is not None:
                longest = max(map(len, option["enum"])) if "enum" in option else option.get("maxLength")
                if "const" in option:
                    longest = len(option["const"])
                assert longest is not None and longest <= column.length, (name, option, column)
                checked += 1
            elif type(column) in LIMITS and option.get("type") == "integer":
                assert option.get("maximum", float("inf")) <= LIMITS[type(column)], (name, option, column)
                assert option.get("minimum", -float("inf")) >= -LIMITS[type(column)] - 1, (name, option, column)
                checked += 1
    assert checked or schema is schemas.BackupNote  # the note is TEXT: nothing to bound but the body size
