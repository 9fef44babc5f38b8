"""The recipe's checks of a composed config, run when the plan is built (before any work):
types and ranges Hydra's struct mode does not check, the model (found, readable, an architecture
every stage supports), LoRA targets against the model's family, the data template, and an
execution provider this machine's onnxruntime can run. Each refusal is one line naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from modelmake.core.errors import ModelmakeError
from modelmake.core.hashing import fact, file_sha256
from modelmake.core.paths import ROOT
from modelmake.data.records import read_records
from modelmake.data.templates import (
    CHAT,
    CHAT_FIELDS,
    field_map,
    role_tokens,
    sandbox_problem,
    slots,
    template_fields,
    template_fit,
)
from modelmake.graph import remote
from modelmake.models import sources
from modelmake.models.families import (
    FAMILIES,
    all_target_names,
    family_for_config,
    resolve_export_targets,
    resolve_lora_targets,
)

# Free-text fields: an override of one is always one literal string, with `\n`, `\t` as escapes.
FREE_TEXT = ("data.template", "data.response_marker", "data.system", "generate.prompt")
# export.execution_provider -> the onnxruntime provider its graph needs at generate/evaluate time
PROVIDERS = {"cuda": "CUDAExecutionProvider", "dml": "DmlExecutionProvider"}


def need(cond: bool, field_name: str, msg: str) -> None:
    if not cond:
        raise ModelmakeError(f"config field '{field_name}': {msg}")


def check(cfg: DictConfig) -> None:
    def positive_int(field_name: str):
        v = OmegaConf.select(cfg, field_name)
        need(isinstance(v, int) and not isinstance(v, bool) and v > 0, field_name,
             f"must be a positive integer, got {v!r}")

    def positive_number(field_name: str):
        v = OmegaConf.select(cfg, field_name)
        need(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, field_name,
             f"must be a positive number, got {v!r}")

    need(cfg.model.kind in ("tiny", "gguf", "pretrained"), "model.kind",
         f"must be 'tiny', 'gguf' or 'pretrained', got {cfg.model.kind!r}")
    for f in ("lora.r", "train.steps", "train.batch_size", "train.grad_accum_steps", "train.max_seq_len",
              "quantize.group_size", "quantize.calib_samples", "quantize.calib_seq_len", "generate.max_new_tokens",
              "threads"):
        positive_int(f)
    for f in ("lora.alpha", "train.lr"):
        positive_number(f)
    need(0 <= cfg.lora.dropout < 1, "lora.dropout", f"must be in [0, 1), got {cfg.lora.dropout!r}")
    need(0 < cfg.data.eval_fraction < 1, "data.eval_fraction", f"must be in (0, 1), got {cfg.data.eval_fraction!r}")
    need(cfg.quantize.w_bit == 4, "quantize.w_bit", "AutoAWQ GEMM supports 4 bits only")
    need(str(cfg.quantize.version).lower() == "gemm", "quantize.version",
         "the ORT-genai builder reads GEMM packing only")
    need(cfg.export.precision in ("int4", "fp32"), "export.precision",
         f"must be int4 or fp32, got {cfg.export.precision!r}")
    need(cfg.export.execution_provider in ("cpu", "cuda", "dml"), "export.execution_provider",
         f"must be cpu, cuda or dml, got {cfg.export.execution_provider!r}")
    head = cfg.export.get("lm_head", "fp32")
    need(head in ("fp32", "int8", "int4"), "export.lm_head", f"must be fp32, int8 or int4, got {head!r}")
    merge = cfg.export.get("merge")
    need(merge in (None, "awq", "rtn"), "export.merge",
         f"must be null (graph + adapter), awq or rtn (the merged graph: export=int4_merged), got {merge!r}")
    need(merge is None or cfg.export.precision == "int4", "export.merge",
         f"merges into an int4 graph; export.precision is {cfg.export.precision!r} (use export=int4_merged)")
    for f in ("train.weight_decay", "train.warmup_steps"):  # torch would fail (or silently ramp) late
        v = OmegaConf.select(cfg, f)
        need(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0, f, f"must be >= 0, got {v!r}")
    need(isinstance(cfg.train.warmup_steps, int), "train.warmup_steps",
         f"must be a whole number of steps, got {cfg.train.warmup_steps!r}")
    if cfg.train.max_grad_norm is not None:  # null: no clipping
        positive_number("train.max_grad_norm")  # 0 would clip every gradient to nothing
    need_runtime(cfg.export.execution_provider)
    need(bool(cfg.model.trust_remote_code) is False or cfg.model.kind == "pretrained", "model.trust_remote_code",
         "only meaningful for a pretrained model")
    # the model itself, before any work: found, readable, an architecture every stage supports
    model = sources.resolve(cfg.model).facts
    check_targets(cfg, family_of(model["architecture"]) if model else None)
    check_template(cfg, model)
    check_records(cfg, model)
    check_memory(cfg, model)
    for f in ("hidden_size", "intermediate_size"):
        if model.get(f):
            need(model[f] % cfg.quantize.group_size == 0, "quantize.group_size",
                 f"{cfg.quantize.group_size} does not divide the model's {f}={model[f]}")


def check_template(cfg: DictConfig, model: dict) -> None:
    """The data template against the model: a chat template that exists and renders in the sandbox;
    a text template whose markers are the tokenizer's special tokens and whose end marker is a
    stop token (where the tokenizer can be read now; else the dataset stage checks it)."""
    d, name = cfg.data, cfg.model.name
    hint = ("use data.template=chat (the model's own format) or a template in its own markers, or set "
            "data.check_template=false if you mean it")
    if d.template == CHAT:
        chat = model.get("chat_template")
        need(chat is not False, "data.template", f"'chat' needs a chat template, and the tokenizer of model "
             f"'{name}' has none; give the template as text (Olive style: '<|user|>\\n{{prompt}}...')")
        problem = sandbox_problem(chat) if isinstance(chat, str) else None
        need(problem is None, "data.template", f"the chat template of model '{name}' does not render a sample "
             f"conversation in the sandbox ({problem}); give the template as text")
        return
    template_fields(d.template)
    need(not d.response_marker or d.response_marker in d.template, "data.response_marker",
         f"{d.response_marker!r} does not occur in data.template {d.template!r}")
    found = slots(d.template, d.response_marker)
    for role in ("user", "assistant"):
        need(not d.fields[role] or role in found, f"data.fields.{role}",
             f"has no effect: data.template has no {role} slot (a placeholder "
             f"{'before' if role == 'user' else 'after'} data.response_marker) for it to fill")
    if d.check_template and model.get("special_tokens") is not None:
        problem = template_fit(d.template, model["special_tokens"], model.get("stop_tokens") or [], name)
        need(problem is None, "data.template", f"{problem}; {hint}")


def check_records(cfg: DictConfig, model: dict) -> None:
    """Every record of the data file read, parsed and checked against the template's fields when
    the plan is built (the file is hashed then anyway; the verdict is memoized by its content), so a
    bad file is refused with its file:line:field lines before any stage runs."""
    d = cfg.data
    if remote.is_remote(d.path):
        sha, path = remote.fetch(d.path)
    else:
        path = Path(d.path) if Path(d.path).is_absolute() else ROOT / d.path
    if not path.is_file():
        return  # named by the dataset stage's data check (recipe.table): not found, a directory, ...
    if d.template == CHAT:
        fields = [d.fields.user or CHAT_FIELDS["user"], d.fields.assistant or CHAT_FIELDS["assistant"]]
        chat = model.get("chat_template")
        forbidden = role_tokens(chat) if isinstance(chat, str) else []
    else:
        fields = list(dict.fromkeys(field_map(d.template, d.response_marker, d.fields).values()))
        forbidden = role_tokens(d.template)
    forbidden = [] if d.allow_special_tokens else forbidden
    fact(file_sha256(path), f"records-ok:{json.dumps([fields, forbidden])}",
         lambda: len(read_records(path, fields, forbidden, name=d.path)))


def check_memory(cfg: DictConfig, model: dict) -> None:
    """A model whose weights alone (fp32, as the CPU stages hold them) exceed both this machine's
    memory and the most any stage asks a scheduler for is refused before work, with both numbers."""
    from modelmake.graph.runner import memory_total

    params = model.get("parameters")
    if not params:
        return
    weights = 4 * params
    asked = max(int(r.mem_mb) for r in cfg.resources.stages.values()) * 1_000_000
    here = memory_total() or 0
    need(weights <= max(here, asked), "model.source",
         f"'{cfg.model.name}' has about {params / 1e9:.2f} B parameters, {weights / 1e9:.1f} GB in fp32: more "
         f"than this machine's {here / 1e9:.1f} GB of memory and the {asked / 1e9:.1f} GB the largest stage "
         "asks for in conf/resources")


def family_of(architecture: str):
    return FAMILIES.get(architecture) or family_for_config({"architectures": [architecture]}, "model.source")


def check_targets(cfg: DictConfig, family) -> None:
    """LoRA target lists: `auto`, or names of the model family's modules. Checked against the
    family when the plan knows it without a download, else against every supported family;
    finetune and export check the real config again."""
    for field_name, resolve in (("lora.target_modules", resolve_lora_targets),
                                ("export.lora_targets", resolve_export_targets)):
        value = OmegaConf.select(cfg, field_name)
        value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        if family is not None:
            resolve(value, family, field_name)
        elif isinstance(value, str):
            need(value == "auto", field_name, f"must be 'auto' or a list of module names, got {value!r}")
        else:
            bad = [v for v in value or [] if str(v) not in all_target_names()]
            need(not bad and value, field_name, f"{bad or '[]'} name no module of any supported family "
                 f"({', '.join(sorted(FAMILIES))}); use 'auto' or their module names")


def need_runtime(provider: str) -> None:
    """Refuse a provider this machine's onnxruntime cannot run before export is built, not in
    generate after it (onnxruntime is imported only for a non-CPU provider)."""
    if provider not in PROVIDERS:
        return
    import onnxruntime

    available = onnxruntime.get_available_providers()
    need(PROVIDERS[provider] in available, "export.execution_provider",
         f"{provider} needs {PROVIDERS[provider]}, which this onnxruntime ({onnxruntime.__version__}) does not "
         f"provide (available: {available}); install its GPU build (environment.yml) or build on a machine that has it")
