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


def _escape_braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def chat_template_as_text(tok, user: str, assistant: str, system: str | None) -> tuple[str, str]:
    """The tokenizer's chat template for one user turn and one assistant turn, as a text template
    (`...{user}...{assistant}...`) and its response marker: what the model sees before its answer.

    One rendering serves training, generation and evaluation alike; `check_chat_rendering`
    proves it equal to the Jinja template's own output on every record.
    """
    if not getattr(tok, "chat_template", None):
        raise ModelmakeError("data.template: 'chat' needs a chat template, and this model's tokenizer has none")
    u, a = "\x00user\x00", "\x00assistant\x00"
    head = [{"role": "system", "content": system}] if system else []
    prompt = tok.apply_chat_template(head + [{"role": "user", "content": u}], add_generation_prompt=True,
                                     tokenize=False)
    full = tok.apply_chat_template(head + [{"role": "user", "content": u}, {"role": "assistant", "content": a}],
                                   tokenize=False)
    if prompt.count(u) != 1 or full.count(a) != 1 or not full.startswith(prompt):
        raise ModelmakeError("data.template: the tokenizer's chat template does not render one turn as a prefix "
                             "of the conversation; give the template as text")
    marker = prompt.split(u, 1)[1]
    before, after = full.split(a, 1)
    template = (_escape_braces(before).replace(u, "{" + user + "}") + "{" + assistant + "}" + _escape_braces(after))
    if template.index(_escape_braces(marker)) != template.index("{" + user + "}") + len(user) + 2:
        raise ModelmakeError(f"data.template: the chat template's response marker {marker!r} also occurs "
                             "before the prompt; give the template as text")
    return template, marker


def check_chat_rendering(tok, items: list[dict], records: list[dict], user: str, assistant: str,
                         system: str | None, path: Path) -> None:
    """Refuse a content-dependent chat template: each record, rendered by Jinja, must equal its
    text-template rendering (which is what generation uses at run time)."""
    head = [{"role": "system", "content": system}] if system else []
    for it, rec in zip(items, records):
        text = tok.apply_chat_template(head + [{"role": "user", "content": rec[user]},
                                               {"role": "assistant", "content": rec[assistant]}], tokenize=False)
        if text != it["text"]:
            raise ModelmakeError(f"{path}:{rec['_line']}: the tokenizer's chat template renders this record "
                                 "differently from its one-turn form; give data.template as text")


def effective_template(d, tok=None) -> tuple[str, str]:
    """(text template, response marker) for the data config: as given, or from the chat template."""
    from modelmake.plan import CHAT

    if d.template != CHAT:
        return d.template, d.response_marker
    return chat_template_as_text(tok, d.fields.user, d.fields.assistant, d.get("system"))


def prepare(path: Path, template: str, marker: str, eval_fraction: float, seed: int, check=None,
            forbidden: list[str] = ()):
    fields = template_fields(template)
    if marker and marker not in template:
        raise ModelmakeError(f"data.response_marker {marker!r} does not occur in data.template")
    records = read_records(path, fields, forbidden)
    items = [render(template, marker, r) for r in records]
    if check is not None:
        check(items, records)
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


TEMPLATE_FILE = "template.json"


def load_template(dataset_dir: Path) -> tuple[str, str]:
    """The text template and response marker a dataset was rendered with (generate and evaluate
    render prompts with it, so a chat-template dataset and its prompts agree)."""
    t = json.loads((Path(dataset_dir) / TEMPLATE_FILE).read_text())
    return t["template"], t["response_marker"]


def build(node, out: Path, cfg) -> dict:
    from modelmake.base_model import model_location
    from modelmake.plan import CHAT

    d = cfg.data
    tok, check = None, None
    if d.template == CHAT:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_location(node.inputs["base"].path),
                                            trust_remote_code=bool(cfg.model.trust_remote_code))
        check = lambda items, records: check_chat_rendering(  # noqa: E731
            tok, items, records, d.fields.user, d.fields.assistant, d.get("system"), Path(d.path))
    template, marker = effective_template(d, tok)
    # a record that forges a turn (holds one of the template's role tokens) is refused, file:line:field
    forbidden = [] if d.allow_special_tokens else role_tokens(template)
    train, evals = prepare(Path(d.path), template, marker, d.eval_fraction, d.seed, check, forbidden)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "eval.jsonl", evals)
    (out / TEMPLATE_FILE).write_text(json.dumps(
        {"template": template, "response_marker": marker, "from": "chat" if d.template == CHAT else "text"}, indent=2))
    return {"records": len(train) + len(evals), "train": len(train), "eval": len(evals),
            "distinct": len({i["text"] for i in train + evals})}
