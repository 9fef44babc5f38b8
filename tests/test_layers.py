"""The package's structure: every import points down a layer, and no module imports itself back.

    core            errors, atomic writes, locks, lifecycle, hashing, manifests
    data | models | graph     records and templates | model knowledge | the build-graph machinery
    stages          one module per stage
    recipe          the stage table and its checks
    search, olive   what users run beside the CLI: the Optuna search, the Olive import and translation
    cli             `modelmake` (above the search and the Olive import it offers; `python -m modelmake` above it)

`graph` is machinery: it imports `core` alone, so no stage or model code can reach it (and no
code key needs to follow it). Imports inside functions count as much as top-level ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "modelmake"
LAYER = {"core": 1, "data": 2, "models": 2, "graph": 2, "stages": 3, "recipe": 4, "search": 5, "olive": 5, "cli": 6,
         "__main__": 7}
MAY_IMPORT = {  # beyond its own package, a package imports only these
    "core": set(), "data": {"core"}, "models": {"core"}, "graph": {"core"},
    "stages": {"core", "data", "models"}, "recipe": {"core", "data", "models", "graph"},
}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """modelmake modules `path` imports (a `from pkg import name` that is a module counts as it)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("modelmake")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("modelmake"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            found |= subs or {node.module}
    return found & known


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


MODULES = modules()
GRAPH = {m: imports(p, set(MODULES)) for m, p in MODULES.items()}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if room(m) in LAYER))
def test_every_import_points_down(module):
    here = room(module)
    bad = []
    for target in GRAPH[module]:
        there = room(target)
        if there == here or not there:
            continue
        allowed = MAY_IMPORT.get(here)
        if (allowed is not None and there not in allowed) or LAYER.get(there, 0) >= LAYER[here]:
            bad.append(target)
    assert not bad, f"{module} imports {sorted(bad)}: up a layer, or into a room it may not enter"


def test_the_machinery_imports_no_stage_model_or_data_code():
    for module, targets in GRAPH.items():
        if room(module) in ("core", "graph"):
            assert {room(t) for t in targets} <= {"core", "graph", ""}, (module, targets)


def test_no_module_imports_itself_back():
    def reaches(start):
        seen, todo = set(), [start]
        while todo:
            for t in GRAPH.get(todo.pop(), ()):
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return seen

    circles = sorted(m for m in MODULES if m in reaches(m))
    assert not circles, f"import cycles through {circles}"


def test_the_check_sees_a_violation(tmp_path):
    """The checks are not vacuous: an upward import in a copy of a core module is found."""
    bad = tmp_path / "atomic.py"
    bad.write_text("from modelmake.stages.layout import MODEL_DIR\n")
    found = imports(bad, set(MODULES))
    assert found == {"modelmake.stages.layout"}
    assert LAYER[room("modelmake.stages.layout")] > LAYER["core"]
