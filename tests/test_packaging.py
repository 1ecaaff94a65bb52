"""Every third-party module the library imports is a declared dependency; and the quick test
loop leaves the slow tests out.

A developer's venv holds more than the package declares (dev tools, leftovers), so a missing
entry in pyproject.toml passes every local test and fails only on a fresh machine. This test
reads the imports from the source and the declared requirements from pyproject.toml.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the CI image runs 3.11

ROOT = Path(__file__).resolve().parents[1]
# Modules that arrive with a declared dependency and are imported only as part of its API.
VIA = {"click": "typer", "starlette": "fastapi"}  # FastAPI documents handlers on Starlette's HTTPException
# Optional extras: imported only inside the functions that need them, declared under
# [project.optional-dependencies] (`pip install 'cuetune[ray]'`).
OPTIONAL = {"ray": "ray"}


def _imported_top_modules() -> dict[str, str]:
    found: dict[str, str] = {}
    for path in sorted((ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")
            for req in project["dependencies"]}


def test_every_third_party_import_is_declared():
    declared = _declared()
    dists = packages_distributions()
    missing = []
    for module, where in _imported_top_modules().items():
        if module in sys.stdlib_module_names or module == "cuetune":
            continue
        owners = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if VIA.get(module) in declared:
            continue
        if module in OPTIONAL:
            continue  # checked by test_optional_extras_are_declared_and_imported_lazily
        if not owners & declared:
            missing.append(f"{module} (imported in {where}; distribution {sorted(owners)})")
    assert not missing, "add to [project].dependencies in pyproject.toml: " + "; ".join(missing)


def test_optional_extras_are_declared_and_imported_lazily():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for module, extra in OPTIONAL.items():
        assert any(req.startswith(module) for req in extras[extra]), f"[{extra}] lacks {module}"
        for path in sorted((ROOT / "src").rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
            names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
            names += [n.module for n in top if isinstance(n, ast.ImportFrom) and n.module]
            assert module not in {x.split(".")[0] for x in names}, (
                f"{path.relative_to(ROOT)} imports {module} at module level: a default install "
                f"(without cuetune[{extra}]) could not import it")



def test_the_quick_loop_leaves_the_slow_tests_out():
    """`pytest -m "not slow"` is a developer's loop of about two minutes (README): the real-model,
    multi-process and Ray tests stay for the full suite. Collection only, in a subprocess."""
    slow = ["tests/test_integration.py", "tests/test_distributed.py", "tests/test_bench_dist.py"]
    quick = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not slow",
                            "-W", "error::pytest.PytestUnknownMarkWarning", *slow],
                           cwd=ROOT, capture_output=True, text=True)
    assert "no tests collected" in quick.stdout and "deselected" in quick.stdout, quick.stdout + quick.stderr
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert any(m.startswith("slow:") for m in declared["markers"])
