"""Mutation testing with mutmut, one module at a time, each against the few tests that are meant to guard it.

    .venv/bin/python tools/mutation.py                    # every target below (about 1-2 hours on 2 cores)
    .venv/bin/python tools/mutation.py engine.manifest    # one or more targets by name
    .venv/bin/python tools/mutation.py --only survivors services.actions   # after a new test: rerun the survivors

Why a script and not one ``[tool.mutmut]`` section: mutmut reads its configuration from ``pyproject.toml`` in the
directory it runs in, and one test selection for all modules would make every mutant of ``api/formats.py`` run
the whole API suite. So each target runs in its own scratch copy of ``src/``, ``tests/`` and ``pyproject.toml``
(under ``build/mutation/<target>``, kept so a rerun only retests what changed) with its own section appended.
mutmut then records which of the selected tests reach each function and runs only those against its mutants,
stopping at the first failure. PostgreSQL halves are left out (``-m "not postgres"``): the SQLite half meets the
same code in these modules.

For each target the survivors are written, with their diffs, to ``build/mutation/<target>.survivors.md``; the
verdict per survivor (killed later by test X, or equivalent because ...) belongs in ``docs/mutation.md``.
"""

from __future__ import annotations

import argparse
import fnmatch
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "mutation"
MUTMUT = Path(sys.executable).parent / "mutmut"


@dataclass(frozen=True)
class Target:
    module: str  # path under src/
    tests: tuple[str, ...]  # the targeted selection
    # Only the mutants of these functions (mutmut names: ``x_name`` for a function, ``xǁClassǁname`` for a method;
    # a name matches as a prefix, ``x_restore`` takes ``x_restore_targets`` too). Empty: the whole module. Used
    # where a module holds guarded behaviours next to code whose mutants would cost an hour to tell us little.
    functions: tuple[str, ...] = ()

    def patterns(self) -> list[str]:
        dotted = self.module.removesuffix(".py").replace("/", ".")
        return [f"{dotted}.{f}*" for f in self.functions]


ENGINE_TESTS = ("tests/unit/engine",)
TARGETS: dict[str, Target] = {
    "engine.chunkstore": Target("vmbackup/engine/chunkstore.py", ENGINE_TESTS),
    "engine.manifest": Target("vmbackup/engine/manifest.py", ENGINE_TESTS),
    "engine.restore": Target("vmbackup/engine/restore.py", ENGINE_TESTS),
    "engine.verify": Target("vmbackup/engine/verify.py", ENGINE_TESTS),
    "engine.gc": Target("vmbackup/engine/gc.py", ENGINE_TESTS),
    "services.auth": Target(
        "vmbackup/services/auth.py",
        (
            "tests/unit/services/test_auth.py",
            "tests/unit/api/test_listing_cache.py",
            "tests/security/test_login_throttle.py",
            "tests/security/test_secrets_at_rest.py",
            "tests/security/test_inactive_accounts.py",
        ),
        # Password and API-key verification and the credential cache; LoginThrottle (unit-tested on its own
        # clock in test_login_throttle.py) is left out to keep a run short.
        functions=("x_hash_api_key", "x__fingerprint", "x__snapshot", "xǁAuthenticatorǁ", "x_sign_in", "x__active"),
    ),
    # What is left of sign-in in the API layer: reading the header and the admin check. The login guards
    # (active-status checks, one hash per refusal, the throttle) moved to services/auth.py `sign_in` (target
    # services.auth); the api.deps results in docs/mutation.md were measured before that move.
    "api.deps": Target(
        "vmbackup/api/deps.py",
        ("tests/security/test_inactive_accounts.py", "tests/security/test_login_throttle.py"),
        functions=("x_authenticate", "x_get_admin_context"),
    ),
    "api.formats": Target("vmbackup/api/formats.py", ("tests/integration/api/test_conventions.py",)),
    # The action guards: compare-and-set locks and ownership checks (F1, F2, F18).
    "services.actions": Target(
        "vmbackup/services/actions.py",
        (
            "tests/failure/test_action_races.py",
            "tests/integration/api/test_ownership.py",
            "tests/integration/api/test_backup_actions.py",
            "tests/integration/services/test_actions.py",
        ),
        functions=(
            "x__lock_backup",
            "x_restore",  # and restore_targets
            "x_may_act_on",
            "x_delete",
            "x_queue_destroy",
            "x__queue_take",
            "x__destroy",
        ),
    ),
    # The worker's multi-key atomic claim, release and the API's hold (F2, F18).
    "db.queries.transactions": Target(
        "vmbackup/db/queries/transactions.py",
        ("tests/integration/db/queries/test_transactions.py", "tests/failure/test_action_races.py"),
        functions=("x__take_keys", "x_claim", "x_release_locks", "x_release_stray_locks", "x_hold", "x_unhold"),
    ),
    # The stalled-worker guard: a take ended by recovery is never marked built.
    "services.tasks": Target(
        "vmbackup/services/tasks.py",
        ("tests/failure/test_action_races.py", "tests/integration/api/test_backups.py"),
        functions=("x__mark_built",),
    ),
    # The fleet (issue 11): which backup server a take goes to, the per-user backup space check, which queue (and so
    # which worker) a transaction goes to, and what the live workers serve.
    "services.placement": Target("vmbackup/services/placement.py", ("tests/integration/services/test_placement.py",)),
    "services.space": Target("vmbackup/services/space.py", ("tests/integration/api/test_backup_space.py",)),
    "services.routing": Target(
        "vmbackup/services/routing.py",
        ("tests/integration/jobs/test_routing.py", "tests/integration/api/test_vm_resource.py"),
    ),
    # What the live workers serve and the waiting line of a transaction no live worker serves; the heartbeat
    # writer (`beat`, `Heartbeat`, `prune`, `check_ids`) is left out.
    "services.fleet": Target(
        "vmbackup/services/fleet.py",
        ("tests/integration/jobs/test_routing.py", "tests/integration/api/test_hypervisors.py"),
        functions=("xǁServedǁ", "x_served", "x_waiting_log", "x_note_waiting"),
    ),
}


def _scratch(name: str, target: Target) -> Path:
    """A copy of the project with a ``[tool.mutmut]`` section for ``target``; mutmut's own cache (``mutants/``)
    survives between runs, the sources and tests are refreshed."""
    work = BUILD / name
    work.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    for tree in ("src", "tests"):
        shutil.rmtree(work / tree, ignore_errors=True)
        shutil.copytree(ROOT / tree, work / tree, ignore=ignore)
    selection = ", ".join(f'"{t}"' for t in target.tests)
    (work / "pyproject.toml").write_text(
        (ROOT / "pyproject.toml").read_text()
        + f"""
[tool.mutmut]
source_paths = ["src"]
only_mutate = ["src/{target.module}"]
pytest_add_cli_args_test_selection = [{selection}]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:xdist", "-m", "not postgres and not slow"]
"""
    )
    return work


def _results(work: Path) -> dict[str, str]:
    """mutant name -> status (killed, survived, timeout, ...)."""
    out = subprocess.run([MUTMUT, "results", "--all", "true"], cwd=work, capture_output=True, text=True, check=True)
    pairs = (line.rsplit(":", 1) for line in out.stdout.splitlines() if ":" in line)
    return {name.strip(): status.strip() for name, status in pairs}


# --only: rerun just the mutants an earlier run left in these states (mutmut reruns every mutant named on its
# command line, and a run without names takes every function of the module).
ONLY = {"unchecked": ("not checked",), "survivors": ("survived", "no tests", "timeout", "suspicious", "not checked")}


def run(name: str, target: Target, *, only: str | None = None) -> tuple[int, float]:
    work = _scratch(name, target)
    started = time.monotonic()
    log = work / "mutmut.log"
    selection = target.patterns()
    skip = False
    if only and (work / "mutants").is_dir():
        wanted = [m for m, st in _results(work).items() if st in ONLY[only]]
        selection = [m for m in wanted if not selection or any(fnmatch.fnmatch(m, p) for p in selection)]
        skip = not selection
        if skip:
            print(f"{name}: no mutant left to rerun", flush=True)
    if not skip:
        with log.open("a" if only else "w") as out:
            cmd = [MUTMUT, "run", "--max-children", "2", *selection]
            subprocess.run(cmd, cwd=work, stdout=out, stderr=subprocess.STDOUT)
    elapsed = time.monotonic() - started
    results = _results(work)
    if target.functions:
        results = {m: st for m, st in results.items() if any(fnmatch.fnmatch(m, p) for p in target.patterns())}
    survivors = sorted(m for m, status in results.items() if status == "survived")
    lines = [f"# Surviving mutants of src/{target.module}", "", f"Tests: {', '.join(target.tests)}", ""]
    for mutant in survivors:
        diff = subprocess.run([MUTMUT, "show", mutant], cwd=work, capture_output=True, text=True).stdout
        lines += [f"## {mutant}", "", "```diff", diff.strip(), "```", ""]
    (BUILD / f"{name}.survivors.md").write_text("\n".join(lines))
    counts = {status: sum(1 for s in results.values() if s == status) for status in sorted(set(results.values()))}
    print(f"{name}: {len(results)} mutants, {counts}, {elapsed:.0f} s", flush=True)
    return len(survivors), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", metavar="TARGET", help=f"default: all of {', '.join(TARGETS)}")
    parser.add_argument(
        "--only", choices=ONLY, help="rerun only the mutants an interrupted run left unchecked, or the survivors"
    )
    args = parser.parse_args()
    names = args.targets or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown target {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    for name in names:
        run(name, TARGETS[name], only=args.only)
    print(f"survivors with their diffs: {BUILD}/<target>.survivors.md; verdicts go in docs/mutation.md")


if __name__ == "__main__":
    main()
