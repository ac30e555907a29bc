"""The engine and storage never import the database, web or job layers (DESIGN.md section 2)."""

from __future__ import annotations

import ast
from pathlib import Path

import vmbackup

FORBIDDEN = (
    "vmbackup.db",
    "vmbackup.api",
    "vmbackup.services",
    "vmbackup.jobs",
    "vmbackup.cli",
    "vmbackup.config",
    "sqlalchemy",
    "fastapi",
    "httpx",
    "procrastinate",
    "psycopg",
)


def test_engine_and_storage_import_only_downward() -> None:
    root = Path(vmbackup.__file__).parent
    for path in [*(root / "engine").rglob("*.py"), *(root / "storage").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            for name in names:
                assert not name.startswith(FORBIDDEN), f"{path.name} imports {name}"
