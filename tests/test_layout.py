"""The package's structure, read from its own import statements (those inside functions included; type-only
imports under ``typing.TYPE_CHECKING`` and script entry points (``__main__`` modules, ``if __name__ ==
"__main__"`` blocks) left out of the layers): imports point down the layers objective -> training ->
orchestration -> reporting -> commands, and no module imports itself through others."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "sdpg"
LAYERS = ["objective", "training", "orchestration", "reporting", "commands"]  # lowest first; other root modules
# (sdpg.paths, sdpg._media: where files live, what is installed) lie below them all

# Functions over 120 lines allowed (name -> lines): none. A function that must grow past it is split instead.
LONG_FUNCTIONS: dict[str, int] = {}


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _is_script_entry(node: ast.If) -> bool:
    """``if __name__ == "__main__":``: the command layer, run only as a script."""
    t = node.test
    return (
        isinstance(t, ast.Compare)
        and isinstance(t.left, ast.Name)
        and t.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in t.comparators)
    )


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Package modules that ``path`` imports when it runs (at any depth of the file)."""
    tree = ast.parse(path.read_text())
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and (_is_type_checking(node) or _is_script_entry(node))
        for n in ast.walk(node)
    }
    me = _module(path)
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            while n and n not in modules:
                n = n.rpartition(".")[0]
            if n and n != me and n != "sdpg":
                out.add(n)
    return out


def _graph() -> dict[str, set[str]]:
    files = [p for p in PKG.rglob("*.py") if "assets" not in p.parts]
    modules = {_module(p) for p in files}
    return {_module(p): _imports(p, modules) for p in files}


# root modules that sit inside a layer: the safe writer redacts through sdpg.training.redact
ROOT_IN_LAYER = {"sdpg.fsio": "training"}


def _layer(module: str) -> int:
    if module in ROOT_IN_LAYER:
        return LAYERS.index(ROOT_IN_LAYER[module])
    if module.endswith("__main__"):  # ``python -m ...`` entry points: the command layer
        return len(LAYERS)
    top = module.split(".")[1] if module.count(".") else module
    if top in LAYERS:
        return LAYERS.index(top)
    return -1 if module.count(".") == 1 else len(LAYERS)  # a root helper module: below; the package itself: on top


def test_imports_point_down_the_layers():
    upward = [f"{a} -> {b}" for a, deps in _graph().items() for b in deps if _layer(b) > _layer(a) and not a.endswith("__init__")]
    assert not upward, upward


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d) :] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, [" -> ".join(c) for c in cycles]


def test_the_checks_see_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    pkg = tmp_path / "sdpg"
    for sub in ("objective", "training"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "objective" / "a.py").write_text("def f():\n    from sdpg.training.b import g\n")
    (pkg / "training" / "b.py").write_text("from sdpg.objective import a\n")
    monkeypatch.setattr(__import__(__name__), "PKG", pkg)
    with pytest.raises(AssertionError, match="sdpg.objective.a -> sdpg.training.b"):
        test_imports_point_down_the_layers()
    with pytest.raises(AssertionError, match="sdpg.objective.a -> sdpg.training.b -> sdpg.objective.a"):
        test_no_import_cycle()


def test_no_function_grows_past_120_lines():
    found = {}
    for p in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno:
                n = node.end_lineno - node.lineno + 1
                if n > 120:
                    found[f"{p.relative_to(PKG)}:{node.name}"] = n
    new = {k: v for k, v in found.items() if k not in LONG_FUNCTIONS}
    grown = {k: v for k, v in found.items() if k in LONG_FUNCTIONS and v > LONG_FUNCTIONS[k]}
    assert not new and not grown, (new, grown)
