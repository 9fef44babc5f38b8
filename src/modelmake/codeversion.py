"""The version of the code that builds a stage: its script, every modelmake module it imports
(transitively, found by reading the source, not by importing it), and the libraries it runs.

Cheap enough for every Snakemake start and every stage process: no heavy import happens here,
and a file's imports are parsed once per content (memoized by its sha256, hashcache), not once
per stage that reaches it.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from modelmake import hashcache

PACKAGE = "modelmake"
PACKAGE_DIR = Path(__file__).resolve().parent


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


@lru_cache(maxsize=None)
def _imports(path: Path) -> set[str]:
    """modelmake modules imported anywhere in `path`."""
    modules, maybe = hashcache.fact(hashcache.file_sha256(path), "modelmake-imports", lambda: _parse_imports(path))
    # which names are submodules depends on the files present, not on this file: checked each time
    return {*modules, *(m for m in maybe if _module_path(m))}


@lru_cache(maxsize=None)
def import_closure(entry: Path) -> tuple[Path, ...]:
    """`entry` and every modelmake source file it reaches through imports, sorted."""
    seen: set[Path] = set()
    todo = [Path(entry).resolve()]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for mod in _imports(path):
            parts = mod.split(".")
            for i in range(1, len(parts) + 1):  # a.b.c imports a, a.b and a.b.c
                p = _module_path(".".join(parts[:i]))
                if p is not None and p not in seen:
                    todo.append(p)
    return tuple(sorted(seen))


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


@lru_cache(maxsize=None)
def code_version(entry: Path, libraries: tuple[str, ...]) -> dict:
    """{"sha256": ..., "files": {relpath: sha}, "libraries": {dist: version}} for a stage script."""
    files = {}
    root = PACKAGE_DIR.parent.parent
    for path in import_closure(Path(entry)):
        try:
            rel = str(path.relative_to(root))
        except ValueError:
            rel = str(path)
        files[rel] = hashcache.file_sha256(path)
    libs = {name: _dist_version(name) for name in sorted(libraries)}
    digest = hashlib.sha256(repr((sorted(files.items()), sorted(libs.items()))).encode()).hexdigest()
    return {"sha256": digest, "files": files, "libraries": libs}
