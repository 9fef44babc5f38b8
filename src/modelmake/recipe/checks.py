"""The recipe's checks of a composed config, run when the plan is built (before any work):
types and ranges Hydra's struct mode does not check, the model (found, readable, an architecture
every stage supports), LoRA targets against the model's family, the data template, and an
execution provider this machine's onnxruntime can run. Each refusal is one line naming the field.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from modelmake.core.errors import ModelmakeError
from modelmake.data.templates import CHAT, template_fields
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
    if cfg.data.template == CHAT:
        need(model.get("chat_template") is not False, "data.template",
             f"'chat' needs a chat template, and the tokenizer of model '{cfg.model.name}' has none; "
             "give the template as text (Olive style: '<|user|>\\n{prompt}...')")
    else:
        template_fields(cfg.data.template)
        need(not cfg.data.response_marker or cfg.data.response_marker in cfg.data.template, "data.response_marker",
             f"{cfg.data.response_marker!r} does not occur in data.template {cfg.data.template!r}")
    for f in ("hidden_size", "intermediate_size"):
        if model.get(f):
            need(model[f] % cfg.quantize.group_size == 0, "quantize.group_size",
                 f"{cfg.quantize.group_size} does not divide the model's {f}={model[f]}")


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
