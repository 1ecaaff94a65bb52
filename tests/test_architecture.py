"""The layering the architecture relies on (docs/ARCHITECTURE.md), checked on the source:
no import cycles, family names compared only inside `cuetune.families`, no module past ~400
lines, and every registered family covered by the contract suite's tiny models."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import KINDS, family_of

from cuetune import families

SRC = Path(__file__).resolve().parents[1] / "src" / "cuetune"


def _module(path: Path) -> str:
    parts = ["cuetune", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """cuetune modules `path` imports anywhere (function bodies too), except under
    `if TYPE_CHECKING:`; `from pkg import sub` counts as importing `pkg.sub` when it is one."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and getattr(node.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(node)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules
            out |= subs or ({node.module} & modules)
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in SRC.rglob("*.py")}
    return {m: _imports(p, set(files)) - {m} for m, p in files.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_family_names_are_compared_only_in_the_families_package():
    names = "|".join(families.REGISTRY)
    compare = re.compile(rf"""(==|!=|\bin\b)\s*[({{\[]?\s*["']({names})["']|["']({names})["']\s*(==|!=)""")
    found = [f"{p.relative_to(SRC)}:{i}: {line.strip()}"
             for p in SRC.rglob("*.py") if "families" not in p.parts
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if compare.search(line) or ".family.name ==" in line]
    assert found == []


def test_modules_stay_small():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 420}
    assert long == {}


def test_every_registered_family_has_a_tiny_model_in_the_contract_suite():
    assert set(families.REGISTRY) <= {family_of(k) for k in KINDS}
