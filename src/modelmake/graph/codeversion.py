"""The version of the code that builds a stage: its module, every modelmake module that imports
for the computation (transitively, found by reading the source, not by importing it), and the
libraries it runs.

The closure stops at the machinery (`MACHINERY`: core, graph, recipe, the CLI): how a stage is
run, locked, written atomically or planned is not what it computes, so a fix there re-keys
nothing. What the runner writes into every artifact is covered by `runner.RUNNER_FORMAT`, bumped
by hand. tests/test_layers.py checks the machinery imports no stage or model code.

Cheap enough for every Snakemake start and every stage process: no heavy import happens here,
and a file's imports are parsed once per content (memoized by its sha256, hashing.fact), not once
per stage that reaches it.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from importlib import metadata
from pathlib import Path

from modelmake.core import hashing

PACKAGE = "modelmake"
PACKAGE_DIR = Path(__file__).resolve().parent.parent
# Modules no code key follows into (the package root's __init__ included).
MACHINERY = ("modelmake.core", "modelmake.graph", "modelmake.recipe", "modelmake.cli", "modelmake.search",
             "modelmake.__main__")


def is_machinery(module: str) -> bool:
    return module == PACKAGE or any(module == m or module.startswith(m + ".") for m in MACHINERY)


def module_path(name: str) -> Path:
    """The source file of a modelmake module (`modelmake.stages.quantize`)."""
    path = _module_path(name)
    if path is None:
        raise FileNotFoundError(f"no source file for module {name}")
    return path


def _module_path(name: str) -> Path | None:
    rel = name.split(".")[1:]
    for cand in (PACKAGE_DIR.joinpath(*rel).with_suffix(".py"), PACKAGE_DIR.joinpath(*rel, "__init__.py")):
        if cand.is_file():
            return cand
    return None


def _parse_imports(path: Path) -> list[list[str]]:
    """[modules imported, names that may be submodules (`from modelmake import x`)] in `path`,
    top level or inside functions: a function of the file's content alone."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    modules, maybe = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
            modules.add(node.module)
            maybe.update(f"{node.module}.{a.name}" for a in node.names)
    return [sorted(modules), sorted(maybe)]


@cache
def _imports(path: Path) -> set[str]:
    """modelmake modules imported anywhere in `path`."""
    modules, maybe = hashing.fact(hashing.file_sha256(path), "modelmake-imports", lambda: _parse_imports(path))
    # which names are submodules depends on the files present, not on this file: checked each time
    return {*modules, *(m for m in maybe if _module_path(m))}


def _packages(path: Path) -> set[str]:
    """The packages a module file sits in (Python runs their __init__ before it)."""
    try:
        rel = path.relative_to(PACKAGE_DIR)
    except ValueError:
        return set()
    parts = [PACKAGE, *rel.parent.parts]
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


@cache
def import_closure(entry: Path) -> tuple[Path, ...]:
    """`entry` and every modelmake source file it reaches through imports, short of the machinery, sorted."""
    seen: set[Path] = set()
    todo = [Path(entry).resolve()]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for mod in _imports(path) | _packages(path):
            parts = mod.split(".")
            for i in range(1, len(parts) + 1):  # a.b.c imports a, a.b and a.b.c
                name = ".".join(parts[:i])
                p = None if is_machinery(name) else _module_path(name)
                if p is not None and p not in seen:
                    todo.append(p)
    return tuple(sorted(seen))


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


@cache
def code_version(entry: Path, libraries: tuple[str, ...]) -> dict:
    """{"sha256": ..., "files": {relpath: sha}, "libraries": {dist: version}} for a stage module."""
    files = {}
    root = PACKAGE_DIR.parent.parent
    for path in import_closure(Path(entry)):
        try:
            rel = str(path.relative_to(root))
        except ValueError:
            rel = str(path)
        files[rel] = hashing.file_sha256(path)
    libs = {name: _dist_version(name) for name in sorted(libraries)}
    digest = hashlib.sha256(repr((sorted(files.items()), sorted(libs.items()))).encode()).hexdigest()
    return {"sha256": digest, "files": files, "libraries": libs}
