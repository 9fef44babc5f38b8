"""The mapping: one Olive workflow config -> Hydra settings and one row per Olive setting. The parts
of the workflow are mapped by mixins (inputs: the model and where it runs; data; passes); this class
records rows and reports every setting no part read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelmake.core.errors import ModelmakeError
from modelmake.olive.data import DataMapping
from modelmake.olive.document import Doc
from modelmake.olive.inputs import InputMapping
from modelmake.olive.passes import PassMapping
from modelmake.olive.settings import (
    ADDED,
    DEFAULT,
    MISSING,
    NO_EQUIVALENT,
    NOT_TAKEN,
    STAGE_ORDER,
    TAKEN,
    Mapped,
    Options,
    Row,
    override_value,
)
from modelmake.olive.tables import Field, reason


class Mapper(InputMapping, DataMapping, PassMapping):
    """Reads one Olive workflow config into Hydra settings and rows."""

    def __init__(self, doc: Doc, options: Options):
        self.doc, self.opt = doc, options
        self.values: dict[str, Any] = {}
        self.origins: dict[str, str] = {}
        self.rows: list[Row] = []
        self.warnings: list[str] = []
        self.stages: set[str] = set()
        self.unmapped: dict[tuple, str] = {}   # a section whose settings all share one reason

    # -- recording

    def row(self, path: tuple | None, status: str, became: dict | None = None, note: str = "", value=MISSING,
            origin: str | None = None, near: tuple | None = None) -> None:
        """One row of the table; it reads the setting at `path` (what no row reads is reported by `rest`).
        A row of its own (path None: a default, a stage modelmake adds) sits `near` a setting."""
        became = became or {}
        for k, v in became.items():
            self.values[k] = v
            self.origins[k] = (origin or (self.doc.label(path) if path else "")) + \
                (" (not set: Olive's default)" if status == DEFAULT and "(not set" not in (origin or "") else "")
        if path is not None:
            got = self.doc.take(path, MISSING)
            value = got if value is MISSING and not self.doc.flag(path) else value
        where = path if path is not None else near
        self.rows.append(Row(origin or (self.doc.label(path) if path is not None else ""), value,
                             [f"{k}={override_value(k, v)}" for k, v in became.items()], status, note,
                             self.doc.place(where) + (0.5 if path is None else 0) if where is not None else 1 << 30))

    def convert(self, path: tuple, value, convert: Callable):
        try:
            return convert(value)
        except (ValueError, TypeError) as e:
            raise self.doc.refuse(path, str(e)) from None

    def fields(self, table: tuple[Field, ...], scopes: list[tuple], where: str) -> None:
        """Each field of `table` from the first scope holding one of its names; else Olive's default."""
        for f in table:
            hit = next(((s, n) for s in scopes for n in f.names if self.doc.has((*s, n))), None)
            if hit is not None:
                path = (*hit[0], hit[1])
                value = self.convert(path, self.doc.get(path), f.convert)
                self.row(path, TAKEN, {f.key: value}, f.note)
            elif f.default is not MISSING:
                self.row(None, DEFAULT, {f.key: f.default}, f"not set: Olive's default {f.default!r}",
                         origin=f"{where}.{f.names[0]}", near=scopes[0])

    def scopes(self, path: tuple, *subs: str) -> list[tuple]:
        """`path` and the parameter sections nested under it that exist (params, extra_args)."""
        out = [path]
        for s in subs:
            if isinstance(self.doc.get((*path, s)), dict):
                out.append((*path, s))
        return out

    # -- the whole workflow

    def run(self) -> Mapped:
        self.model()
        passes = self.passes()
        finetune = next(((n, p) for n, p, kind in passes if kind == "lora"), None)
        self.data(finetune)
        self.system()
        for n, p, kind in passes:
            {"lora": self.lora, "awq": self.awq, "builder": self.builder, "merge": self.merge,
             "extract": self.extract, "other": self.other}[kind](n, p, passes)
        self.chain_additions(passes)
        self.rest()
        self.rows.sort(key=lambda r: r.order)
        until = max(self.stages, key=STAGE_ORDER.index) if self.stages else None
        return Mapped(self.values, self.origins, self.rows, until, self.warnings)

    def chain_additions(self, passes) -> None:
        kinds = {k for _, _, k in passes}
        if "awq" not in kinds:
            self.row(None, ADDED, {"quantize": "awq_g64"}, "no AWQ pass: modelmake's chain quantizes with AWQ "
                     "(group 64) before fine-tuning and exporting", origin="(no quantization pass)")
        if "builder" not in kinds and "extract" not in kinds:
            self.row(None, ADDED, note="no ModelBuilder pass: modelmake's chain still exports an int4 "
                     "onnxruntime-genai graph and the adapter", origin="(no export pass)")
        if self.opt.strict and (none := [r for r in self.rows if r.status == NO_EQUIVALENT]):
            raise ModelmakeError(f"{self.doc.source}: --strict: no modelmake equivalent for "
                                 + ", ".join(f"{r.origin} ({r.value})" for r in none))

    def rest(self) -> None:
        """Every setting no mapping read: one row each, with the reason it is not taken."""
        for path in self.doc.order:
            if path in self.doc.seen:
                continue
            self.doc.seen.add(path)
            why = next((w for q, w in self.unmapped.items() if path[: len(q)] == q), None) or reason(path)
            self.rows.append(Row(self.doc.label(path), MISSING if self.doc.flag(path) else self.doc.get(path), [],
                                 NOT_TAKEN, why, self.doc.place(path)))


def map_config(tree: dict, source: str, options: Options, labels: dict | None = None,
               orders: dict | None = None) -> Mapped:
    return Mapper(Doc(tree, source, labels, orders), options).run()

