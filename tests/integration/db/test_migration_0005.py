"""Migration 0005 on a database an older vmbackup wrote (SQLite, where ids were reused before it).

Existing backups are bound to the VM and disk now carrying their ids only when those were made before the backup;
the id counters start above every id anything still refers to; nothing referring to a rebuilt table is lost.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from vmbackup.db.migrate import upgrade
from vmbackup.db.session import make_engine

T0 = datetime(2026, 1, 1, 12, 0, 0)


def _insert(conn: Any, table: str, **values: Any) -> None:
    """A row with the given values, and a plain value for every other NOT NULL column of the table as it is."""
    cols = sa.inspect(conn).get_columns(table)
    for col in cols:
        if col["name"] in values or col["nullable"] or col["name"] == "id":
            continue
        kind = str(col["type"]).upper()
        if col["name"] == "identifier":
            values["identifier"] = f"{table[:4]}{values.get('id', 0):010d}"
            continue
        plain = {"DATE": T0, "BOOL": False, "INT": 0, "JSON": "{}"}
        values[col["name"]] = next((v for k, v in plain.items() if k in kind), "x")
    names = ", ".join(f'"{n}"' for n in values)  # "primary" is a keyword
    conn.execute(sa.text(f"INSERT INTO {table} ({names}) VALUES ({', '.join(':' + n for n in values)})"), values)


def test_0005_binds_old_backups_only_to_vms_and_disks_older_than_them(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(engine, "0004")
    later = T0 + timedelta(days=1)
    with engine.begin() as conn:
        _insert(conn, "users", id=1, login="alice", email="a@x", identifier="alice000000000")
        _insert(conn, "image_templates", id=1, label="t")
        _insert(conn, "data_stores", id=1, label="ds")
        _insert(conn, "backup_servers", id=1, label="bs", storage_path="/srv")
        # VM 2 and its disk 3 were made after backup 10 of an earlier VM 2 / disk 3 (ids reused), before backup 11.
        _insert(conn, "virtual_machines", id=2, user_id=1, template_id=1, identifier="vmnow000000000", created_at=later)
        _insert(
            conn, "disks", id=3, virtual_machine_id=2, data_store_id=1, identifier="disknow0000000", created_at=later
        )
        common = {"backup_type": "normal", "target_type": "Disk", "target_id": 3, "disk_id": 3, "user_id": 1}
        _insert(conn, "backups", id=10, virtual_machine_id=2, created_at=T0, **common)
        _insert(conn, "backups", id=11, virtual_machine_id=2, created_at=later + timedelta(hours=1), **common)
        incremental = {"backup_type": "incremental", "target_type": "VirtualMachine", "target_id": 2, "user_id": 1}
        _insert(conn, "backups", id=12, virtual_machine_id=2, created_at=later + timedelta(hours=2), **incremental)
        # A backup of VM 9 and disk 14, both deleted since, and a transaction of backup 40 (deleted too).
        _insert(conn, "backups", id=13, virtual_machine_id=9, disk_id=14, target_type="Disk", target_id=14,
                backup_type="normal", user_id=1, created_at=T0)
        _insert(conn, "transactions", id=5, action="destroy_backup", parent_type="Backup", parent_id=40,
                lock_key="backup:40", status="complete")
        _insert(conn, "autobackup_presets", id=1, period="days")
        _insert(conn, "schedules", id=1, target_type="Disk", target_id=3, user_id=1, period="days",
                anchor_at=T0, start_at=T0)
        _insert(conn, "schedule_logs", id=1, schedule_id=1, status="complete")
    upgrade(engine)
    with engine.begin() as conn:
        rows = {
            r.id: r
            for r in conn.execute(sa.text("SELECT id, vm_identifier, disk_identifier, disk_identifiers FROM backups"))
        }
        assert rows[10].vm_identifier is None  # taken of the earlier VM 2
        assert (rows[11].vm_identifier, rows[11].disk_identifier) == ("vmnow000000000", "disknow0000000")
        assert rows[12].vm_identifier == "vmnow000000000" and '"disk-3": "disknow0000000"' in rows[12].disk_identifiers
        assert rows[13].vm_identifier is None
        assert conn.execute(sa.text("SELECT lock_keys FROM transactions WHERE id = 5")).scalar() == '["backup:40"]'
        # Rebuilding the schedules table did not cascade into its logs.
        assert conn.execute(sa.text("SELECT count(*) FROM schedule_logs")).scalar() == 1
        seq = dict(conn.execute(sa.text("SELECT name, seq FROM sqlite_sequence")).all())
    assert seq["virtual_machines"] >= 9 and seq["disks"] >= 14 and seq["backups"] >= 40
    with engine.begin() as conn:
        _insert(conn, "virtual_machines", user_id=1, template_id=1, identifier="vmnext00000000")
        assert conn.execute(sa.text("SELECT max(id) FROM virtual_machines")).scalar() == 10
    engine.dispose()
