"""Data configs: the fine-tuning data's file, split, template and where the loss starts."""

from __future__ import annotations

import os
import re
from pathlib import Path

from modelmake.core.errors import ModelmakeError
from modelmake.core.paths import ROOT
from modelmake.olive.document import show
from modelmake.olive.settings import ADDED, DEFAULT, DIFFERS, NOT_TAKEN, TAKEN
from modelmake.olive.tables import integer


class DataMapping:
    """Mapper's part for `data_configs` and the fine-tuning pass's data settings."""

    def data_configs(self) -> list[tuple[tuple, str]]:
        """(path, name) of every data config: a dict by name in older documents, a list now."""
        dc = self.doc.get(("data_configs",))
        if isinstance(dc, dict):
            return [(("data_configs", k), str(v.get("name", k)) if isinstance(v, dict) else k) for k, v in dc.items()]
        if isinstance(dc, list):
            return [(("data_configs", i), str(v.get("name", i)) if isinstance(v, dict) else str(i))
                    for i, v in enumerate(dc)]
        return []

    def find_data(self, ref_path: tuple, note: str, status: str = TAKEN) -> tuple:
        """The data config a pass names (by name or dict key, or inline), with the row of the reference."""
        ref = self.doc.get(ref_path)
        if isinstance(ref, dict):  # inline
            if "name" in ref:
                self.row((*ref_path, "name"), status, note=note)
            return ref_path
        configs = self.data_configs()
        for path, name in configs:
            if ref in (name, path[-1]):
                self.row(ref_path, status, note=note)
                return path
        if len(configs) == 1:  # the guide's pass names "dataset_default_train", its dict key "dataset-default_train"
            self.row(ref_path, DIFFERS, note=f"names no data config; the only one ({configs[0][1]}) is taken")
            return configs[0][0]
        raise self.doc.refuse(ref_path, f"{ref!r} names no data config (have: {[n for _, n in configs]})")

    def data_scopes(self, dc: tuple) -> tuple[list[tuple], list[tuple]]:
        """Where a data config's load and pre-process parameters are, in each layout."""
        doc = self.doc
        if isinstance(doc.get((*dc, "params_config")), dict):  # oldest: shared params + per-component kwargs
            pc = (*dc, "params_config")
            kw = (*pc, "component_kwargs")
            return [(*kw, "load_dataset"), pc], [(*kw, "pre_process_data"), pc]
        load = self.scopes((*dc, "load_dataset_config"), "params")
        pre = self.scopes((*dc, "pre_process_data_config"), "params")
        return load[::-1], pre[::-1]

    def data(self, finetune) -> None:
        doc = self.doc
        if finetune is None:
            self.row(None, ADDED, note="no fine-tuning pass: modelmake's chain fine-tunes on its default data "
                     "(conf/data/travel_sample.yaml); set data.path to yours", origin="(no LoRA pass)")
            return
        name, p = finetune
        ref = (*p, "train_data_config")
        if not doc.has(ref):
            raise doc.refuse(p, "a fine-tuning pass without train_data_config")
        dc = self.find_data(ref, "the fine-tuning data")
        self.check_code(dc)
        for comp in ("load_dataset_config", "pre_process_data_config"):
            if doc.has((*dc, comp, "type")):
                self.row((*dc, comp, "type"), TAKEN, note="Olive's built-in component: modelmake reads JSONL "
                         "records and renders data.template")
        kind = str(doc.get((*dc, "type"), "HuggingfaceContainer"))
        if kind.lower() != "huggingfacecontainer":
            raise doc.refuse((*dc, "type"), f"{kind}: a fine-tune needs text records (HuggingfaceContainer with "
                             "data_files)")
        for q in ((*dc, "type"), (*dc, "name")):
            if doc.has(q):
                self.row(q, TAKEN, note="the fine-tuning data")
        load, pre = self.data_scopes(dc)

        def find(scopes, *keys):
            return next(((*s, k) for s in scopes for k in keys if doc.has((*s, k))), None)

        at = find(load, "data_name")
        data_name = doc.get(at) if at else None
        files_at = find(load, "data_files")
        if files_at is None:
            where = f" ({data_name}, a hub dataset)" if data_name else ""
            raise doc.refuse(at or dc, f"no data_files{where}: modelmake reads a local JSONL file; export the "
                             "records first (datasets: load_dataset(...).to_json('data.jsonl'))")
        if data_name not in (None, "json", "jsonl"):
            raise doc.refuse(at, f"{data_name!r}: modelmake reads JSON Lines records (data_name: json)")
        if at:
            self.row(at, TAKEN, note="JSON records")
        path = self.data_file(files_at, doc.get(files_at))
        for k in ("field",):
            if (q := find(load, k)) is not None:
                raise doc.refuse(q, "records nested under a field of one JSON document: modelmake reads JSON Lines "
                                 "(one record per line)")
        self.split(find(load, "split"), path)
        self.template(pre, find)
        self.eval_split(finetune, dc, path)

    def check_code(self, dc: tuple) -> None:
        """A data config whose components are user_script code is refused, naming the loader."""
        doc = self.doc
        builtin = {"huggingface_dataset", "local_dataset", "simple_dataset", "pre_process", "skip_pre_process",
                   "huggingface_pre_process", "text_generation_huggingface_pre_process", "tokenizer_pre_process",
                   "default_dataloader", "no_auto_batch_dataloader", "dataloader_with_ignored_batch_fields",
                   "default_calibration_dataloader", "post_process", "skip_post_process",
                   "text_classification_post_process", "text_generation_post_process", "ner_post_process"}
        script = doc.get((*dc, "user_script"))
        for comp in ("load_dataset_config", "pre_process_data_config", "post_process_data_config", "dataloader_config",
                     *((f"components.{k}" for k in (doc.get((*dc, "components")) or {}))
                       if isinstance(doc.get((*dc, "components")), dict) else ())):
            q = (*dc, *comp.split("."), "type")
            t = doc.get(q)
            if t is not None and str(t).lower() not in builtin:
                by = f"a loader from user_script {script!r}" if script else "not one of Olive's built-in components"
                raise doc.refuse(q, f"{t!r} is {by}: modelmake runs no config-supplied code; write the records to "
                                 "a JSONL file and name it in data_files")
        for q in [(*dc, "pre_process_data_config", "params", "text_formatting_func"),
                  (*dc, "pre_process_data_config", "text_formatting_func"),
                  (*dc, "params_config", "component_kwargs", "pre_process_data", "text_formatting_func")]:
            if doc.get(q):
                raise doc.refuse(q, f"{doc.get(q)!r} is a formatting function from user_script {script!r}: modelmake "
                                 "runs no config-supplied code; give text_template instead")

    def data_file(self, where: tuple, value) -> Path:
        doc = self.doc
        if isinstance(value, dict) and "type" in value:
            raise doc.refuse(where, f"a {value['type']} resource: download the file first and name it here "
                             "(modelmake reads local files)")
        if isinstance(value, dict):  # {"train": ..., "test": ...}: the training file
            train = value.get("train")
            if train is None:
                raise doc.refuse(where, f"no 'train' file among {sorted(value)}")
            for k in value:
                if k != "train":
                    self.row((*where, k), NOT_TAKEN, note="modelmake holds out data.eval_fraction of the training file")
            where, value = (*where, "train"), train
        if isinstance(value, list):
            if len(value) != 1:
                raise doc.refuse(where, f"{len(value)} files: modelmake reads one JSONL file (concatenate them)")
            value = value[0]
        path = Path(str(value))
        full = path if path.is_absolute() else self.opt.base / path
        if not full.is_file():
            raise doc.refuse(where, f"data file not found: {value} (looked in {self.opt.base})")
        with full.open("rb") as f:
            head = f.read(4096).lstrip(b"\xef\xbb\xbf").lstrip()
        if head[:1] == b"[":
            raise doc.refuse(where, f"{value} is one JSON array: modelmake reads JSON Lines (one record per line)")
        self.row(where, TAKEN, {"data.path": project_path(full)},
                 "" if path.is_absolute() else f"relative to {self.opt.base} ({self.opt.base_is})")
        return full

    def split(self, at: tuple | None, path: Path) -> None:
        if at is None:
            return
        split = str(self.doc.get(at))
        if split == "train":
            self.row(at, TAKEN, note="the whole file; modelmake holds out data.eval_fraction of it (seeded, no "
                     "record on both sides)")
        elif m := re.fullmatch(r"train\[:(\d+(?:\.\d+)?)%\]", split):
            kept = float(m[1]) / 100
            if not 0 < kept < 1:
                raise self.doc.refuse(at, f"{split!r}: keeps {kept:.0%} for training")
            self.row(at, DIFFERS, {"data.eval_fraction": round(1 - kept, 6)},
                     "the rest is held out: modelmake's split is seeded over distinct records, not the file's order")
        else:
            self.row(at, NOT_TAKEN, note=f"{split!r}: modelmake splits the whole file (data.eval_fraction)")

    def template(self, pre: list[tuple], find) -> None:
        doc = self.doc
        chat_at, tmpl_at, cols_at = find(pre, "chat_template"), find(pre, "text_template"), find(pre, "text_cols")
        if chat_at and doc.get(chat_at):
            chat = doc.get(chat_at)
            note = "the tokenizer's own chat template, user/assistant turns from data.fields (prompt/response)"
            if isinstance(chat, str):
                note = "a custom Jinja template: modelmake renders the tokenizer's own instead"
            self.row(chat_at, DIFFERS, {"data.template": "chat"}, note)
            if (q := find(pre, "message_col")) is not None:
                self.row(q, NOT_TAKEN, note="modelmake's chat turns come from prompt/response fields (data.fields)")
        elif tmpl_at:
            template = doc.get(tmpl_at)
            if not isinstance(template, str):
                raise doc.refuse(tmpl_at, f"must be a text, got {template!r}")
            self.set_template(tmpl_at, template)
            if cols_at:
                self.row(cols_at, TAKEN, note="the template's fields")
        else:
            cols = doc.get(cols_at) if cols_at else ["text"]  # Olive's default text_cols
            cols = [cols] if isinstance(cols, str) else cols
            if not isinstance(cols, list) or not all(isinstance(c, str) and c.isidentifier() for c in cols):
                raise doc.refuse(cols_at, f"must be column names, got {cols!r}")
            template = " ".join("{" + c + "}" for c in cols)  # Olive joins text_cols with a space
            self.set_template(cols_at, template, note_extra=" (Olive's default text_cols ['text'])"
                              if cols_at is None else " (text_cols joined with a space, as Olive does)")
        packs = ("Olive packs the records into max_seq_len-token blocks and trains on the whole text, prompts "
                 "included; modelmake trains one record per sequence, the loss on the response only")
        strategies = [q for q in (find(pre, k) for k in ("dataset_type", "corpus_strategy", "strategy")) if q]
        for q in strategies:
            v = doc.get(q)
            self.row(q, DIFFERS, note=packs if str(v).startswith("join") or v == "corpus" else
                     "Olive trains on each record's whole text; modelmake on the response only")
        if not strategies:  # olive/data/component/text_generation.py TextGenParams: strategy defaults to join
            self.row(None, DIFFERS, origin=f"{show(pre[0])}.strategy (not set: Olive's default 'join')",
                     near=pre[0], note=packs)
        if (q := find(pre, "max_seq_len", "source_max_len")) is not None:
            self.row(q, DIFFERS, {"train.max_seq_len": self.convert(q, doc.get(q), integer)},
                     "modelmake truncates each record to it (Olive's join cuts the packed text into blocks of it)")

    def set_template(self, where: tuple | None, template: str, note_extra: str = "") -> None:
        from modelmake.data.templates import template_fields

        try:
            fields = template_fields(template)
        except ModelmakeError as e:
            raise self.doc.refuse(where or ("data_configs",), str(e).removeprefix("data.template: ")) from None
        if self.opt.response_marker is not None:
            marker, how = self.opt.response_marker, "--response-marker"
            if not marks_response(template, marker):
                raise self.doc.refuse(where or ("data_configs",), f"--response-marker {marker!r} does not end the "
                                      f"prompt in {template!r} (its first occurrence must follow every field but "
                                      "the last)")
        elif len(fields) == 1:
            marker, how = "", "one field: the loss is on the whole text, as in Olive"
        else:
            marker, how = derive_marker(template), "derived: the text before the last field"
            if marker is None:
                raise self.doc.refuse(where or ("data_configs",), "cannot tell where the response starts in "
                                      f"{template!r} (give it: --response-marker TEXT)")
        became = {"data.template": template, "data.response_marker": marker}
        note = (f"loss from {marker!r} on ({how}){note_extra}" if marker else how + note_extra)
        if where is None:
            self.row(None, DEFAULT, became, note, origin="pre_process_data_config.text_cols (not set)")
        else:
            self.row(where, TAKEN if where[-1] == "text_template" else DIFFERS, became, note)

    def eval_split(self, finetune, dc: tuple, path: Path) -> None:
        doc = self.doc
        _, p = finetune
        size_at = (*p, "eval_dataset_size")
        if doc.has(size_at):
            size = doc.get(size_at)
            if isinstance(size, bool):
                raise doc.refuse(size_at, f"must be a fraction in (0, 1) or a record count, got {size!r}")
            if isinstance(size, float) and 0 < size < 1:
                self.row(size_at, TAKEN, {"data.eval_fraction": size})
            elif isinstance(size, int) and size >= 1:
                n = count_records(path)
                if size >= n:
                    raise doc.refuse(size_at, f"{size} of {n} records held out")
                self.row(size_at, DIFFERS, {"data.eval_fraction": round(size / n, 6)},
                         f"{size} of the file's {n} records as a fraction (modelmake holds out distinct records)")
            else:
                raise doc.refuse(size_at, f"must be a fraction in (0, 1) or a record count, got {size!r}")
        ev = (*p, "eval_data_config")
        if doc.has(ev):
            other = self.find_data(ev, "modelmake evaluates on its held-out split of the training file "
                                   "(data.eval_fraction)", DIFFERS)
            if other != dc:
                self.row(other, NOT_TAKEN, note="an evaluation data config: modelmake holds out data.eval_fraction")


def derive_marker(template: str) -> str | None:
    """Where the loss starts: the shortest tail of the text between the last two fields that marks
    the response, from a role token in it (`<|end|>\\n<|assistant|>\\n` -> `<|assistant|>\\n`; for
    Llama 3 `<|start_header_id|>assistant<|end_header_id|>\\n`, as `<|end_header_id|>\\n` also
    follows `user`), else the text without its leading newlines, else all of it."""
    import string

    parts = list(string.Formatter().parse(template))
    idx = [i for i, (_, name, _, _) in enumerate(parts) if name is not None]
    literal = parts[idx[-1]][0] if idx else ""
    roles = [literal[m.start():] for m in reversed(list(re.finditer(r"<\|[^|<>\s]+\|>", literal)))]
    return next((c for c in (*roles, literal.lstrip("\n"), literal) if c and marks_response(template, c)), None)


def marks_response(template: str, marker: str) -> bool:
    """The prompt modelmake masks (the template up to the marker's first occurrence) holds every field
    but the last: the loss is on the last field and what follows it."""
    from modelmake.data.templates import prompt_template, template_fields

    if not marker or marker not in template:
        return False
    fields = template_fields(template)
    return template_fields(prompt_template(template, marker) + "{_}") == [*fields[:-1], "_"]


def count_records(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip())


def project_path(path: Path) -> str:
    """A path as the experiment names it: relative to the project when inside it, else absolute."""
    full = Path(os.path.abspath(path))
    try:
        return str(full.relative_to(ROOT))
    except ValueError:
        return str(full)

