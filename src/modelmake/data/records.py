"""Records: a prompt/response JSONL read as people have it (BOM, CRLF), every bad record named by
file, line and field, all at once; the split is deterministic (seeded) and keeps identical
records on one side, so repeated prompts in real data cannot leak from train into eval.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from modelmake.core.errors import ModelmakeError

MAX_REPORTED = 20


def _lines(path: Path, errors: list[str], name=None):
    """(line number, text) of a UTF-8 file as people have it: a leading BOM is dropped, CRLF and LF
    both end a line; a line that is not UTF-8 is reported with its byte offset in the file."""
    data = path.read_bytes()
    offset = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    for lineno, raw in enumerate(data[offset:].split(b"\n"), 1):
        try:
            yield lineno, raw.decode("utf-8").removesuffix("\r")
        except UnicodeDecodeError as e:
            errors.append(f"{name or path}:{lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {offset + e.start} "
                          f"of the file)")
        offset += len(raw) + 1


def read_records(path: Path, fields: list[str], forbidden: list[str] = (), name: str | None = None) -> list[dict]:
    """Records of a JSONL file, each with every template field as a non-empty string holding none
    of the `forbidden` strings (the template's role tokens); `name`: what messages call the file
    (the URL of a blob read from its local copy)."""
    shown = name or path
    if not path.is_file():
        raise ModelmakeError(f"{shown}: data file not found")
    records, errors = [], []
    for lineno, line in _lines(path, errors, name):
        if not line.strip():
            continue  # blank lines (a trailing newline) are not records
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(f"{shown}:{lineno}: not valid JSON ({e.msg}, column {e.colno})")
            continue
        if not isinstance(rec, dict):
            errors.append(f"{shown}:{lineno}: a record must be a JSON object, got {type(rec).__name__}")
            continue
        for name in fields:
            if name not in rec:
                errors.append(f"{shown}:{lineno}: field '{name}' is missing (the template needs {fields})")
            elif not isinstance(rec[name], str) or not rec[name].strip():
                errors.append(f"{shown}:{lineno}: field '{name}' must be a non-empty string, got {rec[name]!r:.40}")
            elif found := [t for t in forbidden if t in rec[name]]:
                errors.append(f"{shown}:{lineno}: field '{name}' holds the template's role token {found[0]!r} "
                              "(set data.allow_special_tokens=true if that is meant)")
        records.append({k: rec.get(k) for k in fields} | {"_line": lineno})
    if errors:
        more = f"\n... and {len(errors) - MAX_REPORTED} more" if len(errors) > MAX_REPORTED else ""
        raise ModelmakeError(f"{len(errors)} bad record(s) in {shown}:\n" + "\n".join(errors[:MAX_REPORTED]) + more)
    if not records:
        raise ModelmakeError(f"{shown}: holds no records")
    return records


def split(items: list[dict], records: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Train and eval items, seeded. Identical records go to one side together, and which side
    depends on the records alone (not on how a model's template renders them), so every model
    trained on one data file holds out the same prompts."""
    groups: dict[str, list[dict]] = {}
    for it, rec in zip(items, records):
        identity = json.dumps({k: v for k, v in rec.items() if not k.startswith("_")}, sort_keys=True)
        groups.setdefault(identity, []).append(it)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    n_eval = round(len(keys) * eval_fraction)
    eval_keys = set(keys[:n_eval])
    train = [it for k in keys if k not in eval_keys for it in groups[k]]
    evals = [it for k in keys if k in eval_keys for it in groups[k]]
    return train, evals


def write_jsonl(path: Path, items: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
