"""The layering the architecture relies on (docs/ARCHITECTURE.md), checked on the source.

- Each package imports only the layers below it (`LAYERS`), type-only imports included, so
  there is no import cycle of any kind;
- every cuetune import sits at the top of its module (none hidden in a function to dodge a
  cycle), and no module reaches for another module's private (`_name`) names;
- module names do not repeat across packages, and the package root holds at most 8 modules;
- family names are compared only in `cuetune.families`, method names only in
  `cuetune.methods`;
- a module past ~600 lines is worth a look (an alarm, not a rule: files split by meaning).
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

from conftest import KINDS, family_of

from cuetune import families

SRC = Path(__file__).resolve().parents[1] / "src" / "cuetune"

LAYERS = [
    ["cuetune._version", "cuetune.errors", "cuetune.resources", "cuetune.cache"],
    ["cuetune.atomic"],
    ["cuetune.config"],
    ["cuetune.data", "cuetune.metrics"],
    ["cuetune.families"],
    ["cuetune.prompt"],
    ["cuetune.methods"],
    ["cuetune.engine"],
    ["cuetune.runs"],
    ["cuetune.search"],
    ["cuetune.bench", "cuetune.serve"],
    ["cuetune.cli"],
    ["cuetune", "cuetune.__main__"],
]
"""Bottom to top. A module may import its own package and anything in a lower row; never a
package in its own row or above (`cuetune` is the package's public face, `__init__.py`)."""


def _module(path: Path) -> str:
    parts = ["cuetune", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _files() -> dict[str, Path]:
    return {_module(p): p for p in sorted(SRC.rglob("*.py"))}


def unit(module: str) -> str:
    """The entry of `LAYERS` a module belongs to (its package, or itself at the root)."""
    known = {name for row in LAYERS for name in row}
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known and (n > 1 or module == "cuetune"):
            return ".".join(parts[:n])
    raise AssertionError(f"{module}: in no row of LAYERS; add its package to the table")


RANK = {name: i for i, row in enumerate(LAYERS) for name in row}


def imports(tree: ast.AST, modules: set[str]) -> list[tuple[str, int, bool]]:
    """(cuetune module imported, line, at the module's top level) for every import, type-only
    ones too; `from pkg import sub` counts as importing `pkg.sub` when that is a module."""
    top = {id(n) for n in tree.body} | {id(n) for stmt in tree.body if isinstance(stmt, ast.If | ast.Try)
                                        for n in ast.walk(stmt)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top) for a in node.names
                    if a.name.startswith("cuetune")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cuetune"):
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
            out += [(m, node.lineno, id(node) in top) for m in subs or [node.module]]
    return out


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports that go up the table or sideways into another package of the same row."""
    wrong = []
    for module, targets in graph.items():
        mine = unit(module)
        for target in sorted(targets):
            theirs = unit(target)
            if theirs != mine and RANK[theirs] >= RANK[mine]:
                wrong.append(f"{module} imports {target} ({theirs} is not below {mine})")
    return wrong


def _graph() -> dict[str, set[str]]:
    files = _files()
    return {m: {t for t, _, _ in imports(ast.parse(p.read_text(encoding="utf-8")), set(files))} - {m}
            for m, p in files.items()}


def test_every_package_imports_only_the_layers_below_it():
    assert layer_violations(_graph()) == []


def test_the_layer_check_finds_a_planted_upward_import():
    graph = _graph()
    assert layer_violations(graph) == []
    graph["cuetune.data.examples"] = graph["cuetune.data.examples"] | {"cuetune.engine.pipeline"}
    graph["cuetune.bench.report"] = graph["cuetune.bench.report"] | {"cuetune.serve.app"}
    assert sorted(layer_violations(graph)) == [
        "cuetune.bench.report imports cuetune.serve.app (cuetune.serve is not below cuetune.bench)",
        "cuetune.data.examples imports cuetune.engine.pipeline (cuetune.engine is not below cuetune.data)"]


def test_no_import_cycle_not_even_a_type_only_one():
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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


def hidden_imports(source: str, modules: set[str]) -> list[int]:
    return [line for _, line, top in imports(ast.parse(source), modules) if not top]


def test_cuetune_imports_sit_at_the_top_of_their_module():
    files = _files()
    hidden = {f"{p.relative_to(SRC)}:{line}" for p in files.values()
              for line in hidden_imports(p.read_text(encoding="utf-8"), set(files))}
    assert hidden == set()


def test_the_hidden_import_check_finds_one():
    assert hidden_imports("import os\n\ndef f():\n    from cuetune import atomic\n", set()) == [4]


def private_uses(source: str, modules: set[str]) -> list[str]:
    """`from cuetune.x import _name`, and `alias._name` where `alias` is an imported cuetune
    module (dunder names are public)."""
    tree = ast.parse(source)
    aliases, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cuetune"):
            for a in node.names:
                if f"{node.module}.{a.name}" in modules:
                    aliases.add(a.asname or a.name)
                elif a.name.startswith("_") and not a.name.startswith("__"):
                    found.append(f"{node.module}.{a.name}")
        elif isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name.startswith("cuetune")}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names():
    files = _files()
    used = {f"{p.relative_to(SRC)}: {name}" for p in files.values()
            for name in private_uses(p.read_text(encoding="utf-8"), set(files))}
    assert used == set()


def test_the_private_name_check_finds_both_forms():
    source = "from cuetune.engine import fit\nfrom cuetune.metrics.plots import _save\nfit._step()\n"
    assert private_uses(source, {"cuetune.engine.fit"}) == ["cuetune.metrics.plots._save", "fit._step"]


def test_module_names_do_not_repeat_across_packages_and_the_root_stays_small():
    names = Counter(p.stem for p in SRC.rglob("*.py") if p.stem != "__init__")
    assert sorted(n for n, count in names.items() if count > 1) == []
    root = sorted(p.name for p in SRC.glob("*.py"))
    assert len(root) <= 8, root


def _compared(pattern: str, allowed: str) -> list[str]:
    compare = re.compile(pattern)
    return [f"{p.relative_to(SRC)}:{i}: {line.strip()}"
            for p in SRC.rglob("*.py") if allowed not in p.relative_to(SRC).parts
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if compare.search(line)]


def _names(names) -> str:
    """A comparison with one of these names as a string literal, on either side."""
    alt = "|".join(map(re.escape, names))
    return rf"""(==|!=|\bin\b)\s*[({{\[]?\s*["']({alt})["']|["']({alt})["']\s*(==|!=)"""


def test_family_names_are_compared_only_in_the_families_package():
    assert _compared(_names(families.REGISTRY) + r"|family\.name\s*(==|!=)", "families") == []


def test_method_names_are_compared_only_in_the_methods_package():
    """By attribute: `soft` is also a template slot's name, compared where slots are parsed."""
    assert _compared(r"(method\.name|method_name)\s*(==|!=|in\b)", "methods") == []


def test_modules_are_not_past_the_size_alarm():
    """A prompt to look at a module past ~600 lines: does it hold two ideas?"""
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600}
    assert long == {}


def test_every_registered_family_has_a_tiny_model_in_the_contract_suite():
    assert set(families.REGISTRY) <= {family_of(k) for k in KINDS}
