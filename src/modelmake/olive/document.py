"""An Olive config as read: JSON or YAML, every leaf addressed by its path, each read marked, so
what no mapping reads can be reported."""

from __future__ import annotations

import json
from pathlib import Path

from modelmake.core.errors import ModelmakeError
from modelmake.olive.settings import MISSING


def show(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else ("." if out else "") + str(p)
    return out


def leaves(tree, prefix: tuple = ()):
    if isinstance(tree, dict) and tree:
        for k, v in tree.items():
            yield from leaves(v, (*prefix, k))
    elif isinstance(tree, list) and tree and any(isinstance(x, (dict, list)) for x in tree):
        for i, v in enumerate(tree):
            yield from leaves(v, (*prefix, i))
    else:
        yield prefix, tree


class Doc:
    """An Olive config's tree; `take` reads a setting and marks it (and all below it) as read."""

    def __init__(self, tree: dict, source: str, labels: dict[tuple, str] | None = None,
                 orders: dict[tuple, int] | None = None):
        self.tree, self.source, self.labels = tree, source, labels or {}
        self.order = {p: i for i, (p, _) in enumerate(leaves(tree))}
        self.orders = orders  # translate: the place of each flag's setting among the commands' flags
        self.seen: set[tuple] = set()

    def get(self, path: tuple, default=None):
        node = self.tree
        for p in path:
            if isinstance(node, dict) and p in node:
                node = node[p]
            elif isinstance(node, list) and isinstance(p, int) and 0 <= p < len(node):
                node = node[p]
            else:
                return default
        return node

    def has(self, path: tuple) -> bool:
        return self.get(path, MISSING) is not MISSING

    def take(self, path: tuple, default=None):
        value = self.get(path, MISSING)
        if value is MISSING:
            return default
        self.seen.update(p for p in self.order if p[: len(path)] == path)
        return value

    def place(self, path: tuple) -> int:
        """Where a setting (or the first setting under it) is in the document, or among the flags."""
        if self.orders is not None:
            return min((i for q, i in self.orders.items() if q[: len(path)] == path or path[: len(q)] == q),
                       default=1 << 30)
        return min((i for p, i in self.order.items() if p[: len(path)] == path), default=1 << 30)

    def flag(self, path: tuple) -> bool:
        """Whether an olive command's flag set this setting (its label then shows the value)."""
        return self.label(path) != show(path)

    def label(self, path: tuple) -> str:
        for n in range(len(path), 0, -1):  # translate: the flag that set this part of the config
            if path[:n] in self.labels:
                return self.labels[path[:n]]
        return show(path)

    def refuse(self, path: tuple, msg: str):
        return ModelmakeError(f"{self.source}: {self.label(path)}: {msg}")

    def params(self, path: tuple) -> tuple:
        """Where a pass's, system's or model's parameters are: under `config` in the older layouts."""
        return (*path, "config") if isinstance(self.get((*path, "config")), dict) else path


def read_config(path: Path) -> dict:
    """An Olive workflow config (JSON, or YAML as Olive also reads); a parse error names file:line:column."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ModelmakeError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelmakeError(f"{path}: cannot read it as text ({e})") from None
    as_json = path.suffix.lower() == ".json" or (path.suffix.lower() not in (".yaml", ".yml")
                                                 and text.lstrip()[:1] in ("{", "["))
    if as_json:
        try:
            tree = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelmakeError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
    else:
        import yaml

        try:
            tree = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            raise ModelmakeError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(tree, dict):
        raise ModelmakeError(f"{path}: not an Olive workflow config (its top level is a {type(tree).__name__}, "
                             "not a mapping with input_model and passes)")
    return tree

