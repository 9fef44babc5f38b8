"""The dataset stage: read a JSONL, validate every record, render the template, split.

Every bad record is reported with its file, line and field, all at once, and nothing is written
(modelmake.data.records); a chat template is rendered through the base model's tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

from modelmake.core.errors import ModelmakeError
from modelmake.core.paths import remote_copy
from modelmake.data.records import read_records, split, write_jsonl
from modelmake.data.templates import (
    CHAT,
    CHAT_FIELDS,
    check_chat_rendering,
    effective_template,
    field_map,
    render,
    role_tokens,
    template_fields,
    template_fit,
)
from modelmake.stages.layout import TEMPLATE_FILE, model_location, model_revision


def source_path(node, path: str) -> Path:
    """Where the data file's bytes are: the path itself, or for a blob (az://...) its local copy by
    content, made when the plan was built (graph.remote)."""
    if path.startswith(("az://", "azure://", "azureml://")):
        return remote_copy(node.data[path])
    return Path(path)


def prepare(path: Path, template: str, marker: str, eval_fraction: float, seed: int, check=None,
            forbidden: list[str] = (), name: str | None = None, mapping: dict[str, str] | None = None):
    """Train and eval items of a data file; `mapping`: placeholder -> the record field that fills it
    (data.templates.field_map; by default each placeholder reads the field it names)."""
    mapping = mapping or {f: f for f in template_fields(template)}
    if marker and marker not in template:
        raise ModelmakeError(f"data.response_marker {marker!r} does not occur in data.template")
    records = read_records(path, list(dict.fromkeys(mapping.values())), forbidden, name)
    items = [render(template, marker, r, mapping) for r in records]
    if check is not None:
        check(items, records)
    train, evals = split(items, records, eval_fraction, seed)
    for name, part in (("train", train), ("eval", evals)):
        if not part:
            raise ModelmakeError(
                f"{path}: the {name} split is empty ({len(items)} records, "
                f"{len({i['text'] for i in items})} distinct, data.eval_fraction={eval_fraction})"
            )
    return train, evals


def check_fit(template: str, source: str, revision: str | None, cfg) -> None:
    """The text template against the tokenizer the plan could not read (a hub model): its markers
    special tokens, its end marker a stop token (recipe.checks does the same at plan time)."""
    from transformers import AutoConfig, AutoTokenizer

    kw = {"revision": revision} if revision else {}
    tok = AutoTokenizer.from_pretrained(source, trust_remote_code=bool(cfg.model.trust_remote_code), **kw)
    special = sorted(set(tok.all_special_tokens) | {t.content for t in tok.added_tokens_decoder.values() if t.special})
    eos = getattr(AutoConfig.from_pretrained(source, **kw), "eos_token_id", None)
    stops = {tok.convert_ids_to_tokens(i) for i in (eos if isinstance(eos, list) else [eos]) if i is not None}
    problem = template_fit(template, special, sorted(stops | {tok.eos_token} - {None}), cfg.model.name)
    if problem:
        raise ModelmakeError(f"config field 'data.template': {problem}; use data.template=chat, or a template in "
                             "the model's own markers, or set data.check_template=false if you mean it")


def build(node, out: Path, cfg) -> dict:
    d = cfg.data
    tok, check = None, None
    base = node.inputs["base"].path
    source, revision = model_location(base), model_revision(base)
    if d.template == CHAT:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(source, revision=revision,
                                            trust_remote_code=bool(cfg.model.trust_remote_code))
        check = lambda items, records: check_chat_rendering(  # noqa: E731
            tok, items, records, d.fields.user or CHAT_FIELDS["user"], d.fields.assistant or CHAT_FIELDS["assistant"],
            d.get("system"), Path(d.path))
    elif d.check_template and not Path(source).is_dir():
        check_fit(d.template, source, revision, cfg)  # a hub model: not known at plan time
    template, marker = effective_template(d, tok)
    # a record that forges a turn (holds one of the template's role tokens) is refused, file:line:field
    forbidden = [] if d.allow_special_tokens else role_tokens(template)
    mapping = None if d.template == CHAT else field_map(template, marker, d.fields)
    train, evals = prepare(source_path(node, d.path), template, marker, d.eval_fraction, d.seed, check, forbidden,
                           name=d.path, mapping=mapping)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "eval.jsonl", evals)
    (out / TEMPLATE_FILE).write_text(json.dumps(
        {"template": template, "response_marker": marker, "from": "chat" if d.template == CHAT else "text"}, indent=2))
    return {"records": len(train) + len(evals), "train": len(train), "eval": len(evals),
            "distinct": len({i["text"] for i in train + evals})}
