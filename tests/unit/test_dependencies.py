"""Every third-party import is declared in pyproject.toml: the product's in its dependencies
(pgserver in the `embedded` extra only), the tests' and benchmarks' there or in the `test` extra;
and the product works without the `embedded` extra (pgserver imported only when needed)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("domain", "worker", "tasks", "sandbox", "stocksync", "migrations")
OURS = {*PRODUCT, "tests", "bench"}


def _normalized(requirement: str) -> str:
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert name is not None, requirement
    return re.sub(r"[-_.]+", "-", name.group(0)).lower()


def _declared() -> dict[str, set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    groups = {"dependencies": project["dependencies"], **project["optional-dependencies"]}
    return {group: {_normalized(r) for r in reqs} for group, reqs in groups.items()}


def _imported(packages: tuple[str, ...] | set[str]) -> dict[str, set[str]]:
    """Top-level third-party modules imported anywhere in `packages` -> the files importing."""
    found: dict[str, set[str]] = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in OURS:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _distributions(modules: dict[str, set[str]]) -> dict[str, str]:
    """Module -> its installed distribution (normalized); a module of none fails the test."""
    installed = packages_distributions()
    unknown = sorted(m for m in modules if m not in installed)
    assert unknown == [], f"imported but installed by no distribution: {unknown}"
    return {m: _normalized(installed[m][0]) for m in modules}


def test_every_product_import_is_a_declared_dependency() -> None:
    declared = _declared()
    imported = _imported(PRODUCT)
    undeclared = {
        module: sorted(imported[module])
        for module, dist in _distributions(imported).items()
        if dist not in declared["dependencies"] | declared["embedded"]
    }

    assert undeclared == {}, "declare these in [project] dependencies"
    assert declared["embedded"] == {"pgserver"}
    assert "pgserver" not in declared["dependencies"], "the image needs no embedded PostgreSQL"


def test_every_test_and_benchmark_import_is_declared() -> None:
    declared = _declared()
    allowed = declared["dependencies"] | declared["embedded"] | declared["test"]
    imported = _imported({"tests", "bench"})
    undeclared = {
        module: sorted(imported[module])[:3]
        for module, dist in _distributions(imported).items()
        if dist not in allowed
    }

    assert undeclared == {}, "declare these in the `test` extra"
    assert "stocksync" in declared["test"], "the test extra pulls in stocksync[embedded]"


_WITHOUT_PGSERVER = """
import sys
sys.modules["pgserver"] = None  # as in an image without the `embedded` extra: import fails
import worker.app, worker.embedded_postgres, stocksync.cli, tasks.drain
from pathlib import Path
from worker.settings import SettingsError
try:
    worker.embedded_postgres.embedded_database_url(Path(sys.argv[1]))
except SettingsError as exc:
    print(exc)
"""


def test_the_product_imports_without_pgserver_and_names_the_extra_when_it_is_needed(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PGSERVER, str(tmp_path / "data")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "the embedded PostgreSQL needs the `embedded` extra: pip install 'stocksync[embedded]' "
        "(or set STOCKSYNC_DATABASE_URL)"
    )
    assert not (tmp_path / "data").exists()
