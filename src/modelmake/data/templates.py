"""Templates: how a prompt/response record becomes training text, and what the model sees before
its answer. Two kinds: a text template (`<|user|>\n{prompt}<|end|>\n<|assistant|>\n{response}<|end|>`,
as in Olive's --text_template) or `chat`, the tokenizer's own chat template, turned into an
equivalent text template once so training, generation and evaluation render alike.
"""

from __future__ import annotations

import re
import string
from pathlib import Path

from modelmake.core.errors import ModelmakeError

CHAT = "chat"  # data.template: render records through the tokenizer's own chat template


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


def prompt_template(template: str, marker: str) -> str:
    """The template up to and including the response marker: what the model sees as the prompt."""
    return template[: template.index(marker) + len(marker)] if marker else ""


CHAT_FIELDS = {"user": "prompt", "assistant": "response"}  # the record fields a chat turn reads, by default


def slots(template: str, marker: str) -> dict[str, str]:
    """The user's and the assistant's placeholder of a text template: the last one before the
    response marker, and the first one after it."""
    before = template_fields(prompt_template(template, marker)) if marker else []
    after = [f for f in template_fields(template) if f not in before]
    out = {}
    if before:
        out["user"] = before[-1]
    if after:
        out["assistant"] = after[0]
    return out


def field_map(template: str, marker: str, fields) -> dict[str, str]:
    """Placeholder -> the record field that fills it. A text template reads the fields it names,
    unless `data.fields` maps its user or assistant slot onto another field (`data.fields.user=question`
    with `<|user|>\n{prompt}...`: {prompt} is filled from each record's `question`)."""
    mapping = {name: name for name in template_fields(template)}
    for role, placeholder in slots(template, marker).items():
        if fields.get(role):
            mapping[placeholder] = str(fields[role])
    return mapping


def render(template: str, marker: str, rec: dict, mapping: dict[str, str] | None = None) -> dict:
    fields = {ph: rec[field] for ph, field in (mapping or {k: k for k in rec if not k.startswith("_")}).items()}
    text = template.format(**fields)
    prompt = prompt_template(template, marker).format(**fields)
    # completion: what the model is asked to produce (a label, for classification-style data)
    return {"text": text, "prompt": prompt, "completion": text[len(prompt):], "line": rec["_line"]}


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
    if d.template != CHAT:
        return d.template, d.response_marker
    return chat_template_as_text(tok, d.fields.user or CHAT_FIELDS["user"], d.fields.assistant or
                                 CHAT_FIELDS["assistant"], d.get("system"))


def prompt_text(template: str, marker: str, prompt: str) -> str:
    """The prompt as the adapter saw it in training: the data template up to the response."""
    if not marker or marker not in template:
        raise ModelmakeError("data.response_marker must occur in data.template to build a prompt")
    head = prompt_template(template, marker)
    return head.format(**{name: prompt for name in template_fields(head)})


def template_fit(template: str, special: list[str], stops: list[str], model: str) -> str | None:
    """Why a text template does not fit a model's tokenizer, or None: a role marker (`<|...|>`) that
    is not one of its special tokens is split into plain text pieces the model never learned as a
    turn boundary, and an end marker that is not a stop token lets generation run past the answer."""
    unknown = [t for t in role_tokens(template) if t not in special]
    if unknown:
        known = ", ".join(t for t in special if t.startswith("<|")) or ", ".join(special[:6])
        return (f"the marker {unknown[0]!r} is not a special token of {model}'s tokenizer "
                f"(its chat tokens: {known or 'none'})")
    last = max((m.end() for m in re.finditer(r"\{\w+\}", template)), default=len(template))
    ends = role_tokens(template[last:])
    if ends and not set(ends) & set(stops):
        return (f"the end marker {ends[0]!r} is not a stop token of {model} (its stop tokens: "
                f"{', '.join(stops) or 'none'}): generation would run on past the answer")
    return None


def sandbox_problem(chat_template: str) -> str | None:
    """Why a chat template does not render a sample conversation in the Jinja sandbox that
    transformers renders it in, or None."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = lambda x, **kw: __import__("json").dumps(x, **kw)
    messages = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hi?"},
                {"role": "assistant", "content": "Hello."}]
    try:
        env.from_string(chat_template).render(messages=messages, add_generation_prompt=False, bos_token="",
                                              eos_token="")
    except TemplateError as e:  # a SecurityError too
        return f"{type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - any failure of a user's template is the same refusal
        return f"{type(e).__name__}: {e}"
    return None
