"""The import graph is the one docs/architecture.md draws: every import of every module of src/vmbackup (inside
functions and relative ones included) is checked against the table "layer | may import | never imports" there.

A module belongs to the longest layer name that prefixes it (``vmbackup.db.models.users`` is ``db.models``).
KNOWN_VIOLATIONS lists the imports that break the table today, each with why it is still there; an entry that no
longer occurs fails too, so the list only shrinks.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import vmbackup

SRC = Path(vmbackup.__file__).parent
ARCHITECTURE = Path(__file__).parents[2] / "docs" / "architecture.md"

# (importing module, imported module) -> why it is allowed for now. Each is "issue 10: to move": the lead moves
# them after merging, since the files are being edited by other engineers in this issue.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {
    # api/app.py is the composition root of `serve`: it opens the database, migrates, starts the change feed and
    # the in-process worker and scheduler. Issue 10: to move: opening/migrating the database into a service
    # (services/bootstrap.py); starting workers to whoever runs the app (cli serve), handing it a JobQueue.
    ("vmbackup.api.app", "vmbackup.db.changes"): "issue 10: to move (composition: change feed)",
    ("vmbackup.api.app", "vmbackup.db.migrate"): "issue 10: to move (composition: migrate on start)",
    ("vmbackup.api.app", "vmbackup.db.session"): "issue 10: to move (composition: database engine)",
    ("vmbackup.api.app", "vmbackup.jobs.procrastinate_queue"): "issue 10: to move (composition: in-process worker)",
    ("vmbackup.api.app", "vmbackup.jobs.queue"): "issue 10: to move (composition: in-process worker)",
    ("vmbackup.api.app", "vmbackup.jobs.scheduler"): "issue 10: to move (composition: in-process scheduler)",
    ("vmbackup.api.app", "vmbackup.jobs.worker"): "issue 10: to move (composition: in-process worker)",
    # The request context wakes the worker after a commit. Issue 10: to move: the JobQueue protocol belongs to
    # services (actions queue work), jobs implementing it.
    ("vmbackup.api.deps", "vmbackup.jobs.queue"): "issue 10: to move (JobQueue protocol into services)",
    # The listing cache listens to the database's change feed. Issue 10: to move: services expose the feed.
    ("vmbackup.api.listing_cache", "vmbackup.db.changes"): "issue 10: to move (change feed through services)",
    # `vmbackup backups list/verify` open the database and query backups themselves. Issue 10: to move into
    # services/backups.py and services/integrity.py.
    ("vmbackup.cli.backups", "vmbackup.db.session"): "issue 10: to move (query backups through services)",
    # `vmbackup migrate` and `worker` open and migrate the database. Issue 10: to move into services/bootstrap.py.
    ("vmbackup.cli.main", "vmbackup.db.migrate"): "issue 10: to move (migrate through services/bootstrap.py)",
    ("vmbackup.cli.main", "vmbackup.db.session"): "issue 10: to move (open the database through services)",
}


@dataclass(frozen=True)
class Rule:
    may_import: frozenset[str]
    never_imports: frozenset[str]


def _rules() -> dict[str, Rule]:
    """The table of docs/architecture.md whose header is ``| layer | may import | never imports |``."""
    lines = ARCHITECTURE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.fullmatch(r"\|\s*layer\s*\|\s*may import\s*\|.*", line))
    rules: dict[str, Rule] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        layer, may, never = (cell.strip() for cell in line.strip().strip("|").split("|"))
        (name,) = re.findall(r"`([^`]+)`", layer)
        rules[name] = Rule(frozenset(re.findall(r"`([^`]+)`", may)), frozenset(re.findall(r"`([^`]+)`", never)))
    return rules


RULES = _rules()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imports_of(module: str, source: str, known: set[str] | frozenset[str] = frozenset(MODULES)) -> set[str]:
    """Every module ``module`` imports, anywhere in its body; ``from pkg import name`` counts as ``pkg.name``
    when that is a module, relative imports resolved against ``module``'s package."""
    is_package = MODULES.get(module, Path()).name == "__init__.py"
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                assert len(base) == len(package) - node.level + 1, f"{module}: relative import beyond the top"
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return found


def layer_of(module: str) -> str | None:
    """The longest layer of the table that is ``module`` or a package of it; ``None`` for non-vmbackup names."""
    if module != "vmbackup" and not module.startswith("vmbackup."):
        return None
    name = module.removeprefix("vmbackup").removeprefix(".") or "vmbackup"
    candidates = [layer for layer in RULES if name == layer or name.startswith(layer + ".")]
    return max(candidates, key=len) if candidates else None


def allowed(module: str, imported: str) -> bool:
    """Whether the table lets ``module`` (of vmbackup) import ``imported``."""
    rule = RULES[layer_of(module) or ""]
    target = layer_of(imported)
    if target is None:
        return imported.split(".")[0] not in rule.never_imports
    return target == layer_of(module) or target in rule.may_import


def _violations() -> tuple[set[tuple[str, str]], list[str]]:
    edges: set[tuple[str, str]] = set()
    unknown: list[str] = []
    for module, path in MODULES.items():
        if layer_of(module) is None:
            unknown.append(module)
            continue
        imported = imports_of(module, path.read_text())
        edges |= {(module, name) for name in imported if not allowed(module, name)}
    return edges, unknown


def test_the_table_names_real_layers() -> None:
    assert {"cli", "api", "jobs", "services", "db", "engine", "storage", "config", "errors"} <= set(RULES)
    for layer, rule in RULES.items():
        assert layer == "vmbackup" or layer_of(f"vmbackup.{layer}") == layer
        assert any(m == f"vmbackup.{layer}" for m in MODULES) or layer == "vmbackup", layer
        assert rule.may_import <= set(RULES), f"{layer} may import an unknown layer"


def test_every_module_belongs_to_a_layer() -> None:
    assert _violations()[1] == []


def test_imports_follow_the_table_of_docs_architecture() -> None:
    edges, _ = _violations()
    assert sorted(edges - set(KNOWN_VIOLATIONS)) == []


def test_known_violations_still_occur() -> None:
    """A moved import must leave the allow-list too, so that it cannot come back unnoticed."""
    edges, _ = _violations()
    assert sorted(set(KNOWN_VIOLATIONS) - edges) == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("vmbackup.engine.restore", "from .manifest import Manifest", {"vmbackup.engine.manifest"}),
        ("vmbackup.engine.restore", "from .. import errors", {"vmbackup.errors"}),
        ("vmbackup.engine", "from . import facade", {"vmbackup.engine.facade"}),
        ("vmbackup.engine.restore", "def f():\n    from ..db import models\n", {"vmbackup.db.models"}),
        ("vmbackup.engine.restore", "def f():\n    import vmbackup.db.session\n", {"vmbackup.db.session"}),
        ("vmbackup.engine.restore", "from vmbackup.db.models import Backup", {"vmbackup.db.models"}),
        ("vmbackup.api.deps", "from vmbackup.db.queries import users", {"vmbackup.db.queries.users"}),
    ],
)
def test_imports_of_resolves_relative_and_nested_imports(module: str, source: str, expected: set[str]) -> None:
    assert imports_of(module, source) == expected


@pytest.mark.parametrize(
    ("module", "imported", "ok"),
    [
        ("vmbackup.engine.restore", "vmbackup.db.models", False),
        ("vmbackup.engine.restore", "vmbackup.storage.base", True),
        ("vmbackup.engine.restore", "sqlalchemy.orm", False),
        ("vmbackup.storage.local", "vmbackup.engine", False),
        ("vmbackup.services.auth", "fastapi", False),
        ("vmbackup.services.tasks", "vmbackup.engine", True),
        ("vmbackup.api.routes.backups", "vmbackup.db.models", True),
        ("vmbackup.api.routes.backups", "vmbackup.db.queries.backups", False),
        ("vmbackup.api.routes.backups", "vmbackup.engine", False),
        ("vmbackup.jobs.worker", "vmbackup.api.app", False),
        ("vmbackup.services.actions", "vmbackup.jobs.queue", False),
        ("vmbackup.db.queries.users", "vmbackup.services.auth", False),
        ("vmbackup.config", "vmbackup.db", False),
        ("vmbackup.errors", "vmbackup.config", False),
    ],
)
def test_the_table_says_what_the_architecture_says(module: str, imported: str, ok: bool) -> None:
    assert allowed(module, imported) is ok
