"""Imports point downward only (DESIGN.md section 2): front ends -> services -> db/jobs/engine -> storage."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vmbackup

WEB = ("fastapi", "starlette", "uvicorn", "httpx")
FORBIDDEN = {
    "engine": (
        "vmbackup.db",
        "vmbackup.api",
        "vmbackup.services",
        "vmbackup.jobs",
        "vmbackup.cli",
        "vmbackup.config",
        "sqlalchemy",
        "procrastinate",
        "psycopg",
        *WEB,
    ),
    "storage": (
        "vmbackup.db",
        "vmbackup.api",
        "vmbackup.services",
        "vmbackup.jobs",
        "vmbackup.cli",
        "vmbackup.engine",
        "vmbackup.config",
        "sqlalchemy",
        *WEB,
    ),
    "db": ("vmbackup.api", "vmbackup.services", "vmbackup.jobs", "vmbackup.cli", "vmbackup.engine", *WEB),
    "services": ("vmbackup.api", "vmbackup.cli", *WEB),
    "jobs": ("vmbackup.api", "vmbackup.cli", *WEB),
    "api": ("vmbackup.cli",),
}


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.append(node.module or "")
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_downward(layer: str) -> None:
    root = Path(vmbackup.__file__).parent / layer
    bad = [
        f"{p.relative_to(root.parent)} imports {name}"
        for p in root.rglob("*.py")
        for name in _imports(p)
        if name.startswith(FORBIDDEN[layer])
    ]
    assert bad == []
