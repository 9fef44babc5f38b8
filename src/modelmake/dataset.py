"""The dataset stage: read a JSONL, validate every record, render the text template, split.

Every bad record is reported with its file, line and field, all at once, and nothing is written.
The split is deterministic (seeded) and keeps identical records on one side, so repeated
prompts in real data (the Olive lab's travel set has many) cannot leak from train into eval.
"""

from __future__ import annotations

import json
import random
import re
import string
from pathlib import Path

from modelmake.errors import ModelmakeError

MAX_REPORTED = 20


def template_fields(template: str) -> list[str]:
    fields = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None:
            if not name.isidentifier():
                raise ModelmakeError(f"data.template: field '{{{name}}}' is not a plain field name")
            if name not in fields:
                fields.append(name)
    if not fields:
        raise ModelmakeError("data.template: has no {field} to fill")
    return fields


def role_tokens(template: str) -> list[str]:
    """The template's special tokens (`<|user|>`, `<|end|>`, ...): a record holding one could
    close its turn early and forge another speaker's."""
    return sorted(set(re.findall(r"<\|[^|<>\s]+\|>", template)))


def _lines(path: Path, errors: list[str]):
    """(line number, text) of a UTF-8 file as people have it: a leading BOM is dropped, CRLF and LF
    both end a line; a line that is not UTF-8 is reported with its byte offset in the file."""
    data = path.read_bytes()
    offset = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    for lineno, raw in enumerate(data[offset:].split(b"\n"), 1):
        try:
            yield lineno, raw.decode("utf-8").removesuffix("\r")
        except UnicodeDecodeError as e:
            errors.append(f"{path}:{lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {offset + e.start} "
                          f"of the file)")
        offset += len(raw) + 1


def read_records(path: Path, fields: list[str], forbidden: list[str] = ()) -> list[dict]:
    """Records of a JSONL file, each with every template field as a non-empty string holding none
    of the `forbidden` strings (the template's role tokens)."""
    if not path.is_file():
        raise ModelmakeError(f"{path}: data file not found")
    records, errors = [], []
    for lineno, line in _lines(path, errors):
        if not line.strip():
            continue  # blank lines (a trailing newline) are not records
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(f"{path}:{lineno}: not valid JSON ({e.msg}, column {e.colno})")
            continue
        if not isinstance(rec, dict):
            errors.append(f"{path}:{lineno}: a record must be a JSON object, got {type(rec).__name__}")
            continue
        for name in fields:
            if name not in rec:
                errors.append(f"{path}:{lineno}: field '{name}' is missing (the template needs {fields})")
            elif not isinstance(rec[name], str) or not rec[name].strip():
                errors.append(f"{path}:{lineno}: field '{name}' must be a non-empty string, got {rec[name]!r:.40}")
            elif found := [t for t in forbidden if t in rec[name]]:
                errors.append(f"{path}:{lineno}: field '{name}' holds the template's role token {found[0]!r} "
                              "(set data.allow_special_tokens=true if that is meant)")
        records.append({k: rec.get(k) for k in fields} | {"_line": lineno})
    if errors:
        more = f"\n... and {len(errors) - MAX_REPORTED} more" if len(errors) > MAX_REPORTED else ""
        raise ModelmakeError(f"{len(errors)} bad record(s) in {path}:\n" + "\n".join(errors[:MAX_REPORTED]) + more)
    if not records:
        raise ModelmakeError(f"{path}: holds no records")
    return records


def prompt_template(template: str, marker: str) -> str:
    """The template up to and including the response marker: what the model sees as the prompt."""
    return template[: template.index(marker) + len(marker)] if marker else ""


def render(template: str, marker: str, rec: dict) -> dict:
    fields = {k: v for k, v in rec.items() if not k.startswith("_")}
    text = template.format(**fields)
    prompt = prompt_template(template, marker).format(**fields)
    # completion: what the model is asked to produce (a label, for classification-style data)
    return {"text": text, "prompt": prompt, "completion": text[len(prompt):], "line": rec["_line"]}


def split(items: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    groups: dict[str, list[dict]] = {}
    for it in items:
        groups.setdefault(it["text"], []).append(it)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    n_eval = round(len(keys) * eval_fraction)
    eval_keys = set(keys[:n_eval])
    train = [it for k in keys if k not in eval_keys for it in groups[k]]
    evals = [it for k in keys if k in eval_keys for it in groups[k]]
    return train, evals


def prepare(path: Path, template: str, marker: str, eval_fraction: float, seed: int):
    fields = template_fields(template)
    if marker and marker not in template:
        raise ModelmakeError(f"data.response_marker {marker!r} does not occur in data.template")
    items = [render(template, marker, r) for r in read_records(path, fields)]
    train, evals = split(items, eval_fraction, seed)
    for name, part in (("train", train), ("eval", evals)):
        if not part:
            raise ModelmakeError(
                f"{path}: the {name} split is empty ({len(items)} records, "
                f"{len({i['text'] for i in items})} distinct, data.eval_fraction={eval_fraction})"
            )
    return train, evals


def write_jsonl(path: Path, items: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")


def read_split(dataset_dir: Path, name: str) -> list[dict]:
    with (Path(dataset_dir) / f"{name}.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def build(node, out: Path, cfg) -> dict:
    d = cfg.data
    if not d.allow_special_tokens:  # a record that forges a turn is refused, file:line:field
        read_records(Path(d.path), template_fields(d.template), role_tokens(d.template))
    train, evals = prepare(Path(d.path), d.template, d.response_marker, d.eval_fraction, d.seed)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "eval.jsonl", evals)
    return {"records": len(train) + len(evals), "train": len(train), "eval": len(evals),
            "distinct": len({i["text"] for i in train + evals})}
