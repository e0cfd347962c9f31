"""The layers hold and the README's tool table is the registry's: checked over every module, not by review.

- domain/ imports nothing of ours; projections/ only domain/; application/ domain/ and projections/;
  interfaces/ anything; migrations/ is SQL. Imports inside functions count too.
- No import cycles among our modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

LAYERS = {
    "domain": {"domain"},
    "projections": {"projections", "domain"},
    "application": {"application", "projections", "domain"},
    "interfaces": {"interfaces", "application", "projections", "domain", "migrations"},
    "migrations": {"migrations"},
}


def our_modules() -> dict[str, set[str]]:
    """module -> the modules of ours it imports (a `from pkg import name` counts as pkg.name when that is a module)."""
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for layer in LAYERS for p in (ROOT / layer).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                         for a in node.names]
            else:
                continue
            deps |= {n for n in names if n.split(".")[0] in LAYERS}
        graph[module] = {d for d in deps if d in files}
    return graph


def test_every_module_imports_only_from_its_own_layer_or_below():
    wrong = [(m, d) for m, deps in our_modules().items() for d in deps
             if d.split(".")[0] not in LAYERS[m.split(".")[0]]]
    assert not wrong, wrong


def test_there_are_no_import_cycles():
    graph = our_modules()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep] if dep in path else [node, dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles[:5]


def test_the_readme_table_of_tool_groups_is_generated_from_the_registry():
    from application.inventory import toolset_table

    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- toolsets:start")
    section = readme[readme.index("\n", start) + 1: readme.index("<!-- toolsets:end -->")]
    assert section == toolset_table(), "README's tool table differs: paste the output of `flusia tools --markdown`"


def test_every_toolset_has_its_place_whatever_was_imported_first():
    import application.toolsets.tasks  # noqa: F401 - imported before the inventory, as a test module may
    from application.inventory import TOOLSET_ORDER, registry

    assert list(registry.toolsets) == [name for name in TOOLSET_ORDER if name in registry.toolsets]
    assert set(registry.toolsets) <= set(TOOLSET_ORDER), "add the new toolset to TOOLSET_ORDER"
    toolsets = [op.toolset for op in registry]
    assert toolsets == sorted(toolsets, key=TOOLSET_ORDER.index), "tools are listed grouped by toolset, in order"
