"""What modelmake knows about each model family, in one table: its LoRA targets and how the
onnxruntime-genai builder lays its projections out in the graph.

A family is supported when BOTH libraries the recipe runs on take it: AutoAWQ 0.2.9
(`awq/models/auto.py`, AWQ_CAUSAL_LM_MODEL_MAP, keyed by `model_type`) and the onnxruntime-genai
0.18 builder (`models/builder.py`, dispatch on `architectures[0]`). Every stage that depends on a
family (quantize, finetune, export, adapter) asks `family_for_config`, so an architecture outside
the table is refused before any work, naming it and the supported list.

Graph layouts were read off real builds of tiny models (fp32 and int4, AWQ checkpoints; see
tests/test_architectures.py). For Llama, Mistral and Qwen2 the builder PACKS q/k/v into one
`attn/qkv_proj` MatMul (`builders/base.py` make_attention_input_proj: `pack_qkv` unless LoRA is
baked in, the EP is DML, `disable_qkv_fusion`, or one of q/k/v is in nodes_to_exclude) and keeps
gate/up apart (`make_mlp_proj`; `fuse_gate_up` packs them). For Phi-3 it SPLITS the HF `gate_up_proj`
into `gate_proj` and `up_proj` (`make_mlp_unpacked_regular`) and keeps (or re-packs) `qkv_proj`.
Each layout lists its alternatives; the first whose nodes all exist in a layer is used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from modelmake.core.errors import ModelmakeError

# A piece of a graph node's output: (HF module under model.layers.N., index of the module's part).
Piece = tuple[str, int]
# One way the builder may lay a group of HF modules out: graph node (under /model/layers.N/) ->
# the pieces its output columns hold, in order.
Layout = dict[str, tuple[Piece, ...]]


@dataclass(frozen=True)
class Family:
    architecture: str                 # config.json architectures[0] (the builder's dispatch)
    model_type: str                   # config.json model_type (AutoAWQ's dispatch)
    # HF module (under model.layers.N.) -> (its input width, the widths of its output parts).
    # Width names: hidden, q (heads * head_dim), kv (kv heads * head_dim), inter (intermediate).
    modules: dict[str, tuple[str, tuple[str, ...]]]
    # Groups of modules, each with the builder's layouts for it, tried in order.
    layouts: tuple[tuple[Layout, ...], ...]

    @property
    def lora_targets(self) -> list[str]:
        """peft `target_modules` for every projection: the modules' own names."""
        return [m.rsplit(".", 1)[-1] for m in self.modules]


def _one(module: str) -> tuple[Piece, ...]:
    return ((module, 0),)


_LLAMA_MODULES = {
    "self_attn.q_proj": ("hidden", ("q",)),
    "self_attn.k_proj": ("hidden", ("kv",)),
    "self_attn.v_proj": ("hidden", ("kv",)),
    "self_attn.o_proj": ("q", ("hidden",)),
    "mlp.gate_proj": ("hidden", ("inter",)),
    "mlp.up_proj": ("hidden", ("inter",)),
    "mlp.down_proj": ("inter", ("hidden",)),
}
_LLAMA_LAYOUTS = (
    ({"attn/qkv_proj": (("self_attn.q_proj", 0), ("self_attn.k_proj", 0), ("self_attn.v_proj", 0))},
     {"attn/q_proj": _one("self_attn.q_proj"), "attn/k_proj": _one("self_attn.k_proj"),
      "attn/v_proj": _one("self_attn.v_proj")}),
    ({"attn/o_proj": _one("self_attn.o_proj")},),
    ({"mlp/gate_proj": _one("mlp.gate_proj"), "mlp/up_proj": _one("mlp.up_proj")},
     {"mlp/gate_up_proj": (("mlp.gate_proj", 0), ("mlp.up_proj", 0))}),
    ({"mlp/down_proj": _one("mlp.down_proj")},),
)
_PHI3_MODULES = {
    "self_attn.qkv_proj": ("hidden", ("q", "kv", "kv")),
    "self_attn.o_proj": ("q", ("hidden",)),
    "mlp.gate_up_proj": ("hidden", ("inter", "inter")),
    "mlp.down_proj": ("inter", ("hidden",)),
}
_PHI3_LAYOUTS = (
    ({"attn/qkv_proj": (("self_attn.qkv_proj", 0), ("self_attn.qkv_proj", 1), ("self_attn.qkv_proj", 2))},
     {"attn/q_proj": (("self_attn.qkv_proj", 0),), "attn/k_proj": (("self_attn.qkv_proj", 1),),
      "attn/v_proj": (("self_attn.qkv_proj", 2),)}),
    ({"attn/o_proj": _one("self_attn.o_proj")},),
    ({"mlp/gate_up_proj": (("mlp.gate_up_proj", 0), ("mlp.gate_up_proj", 1))},
     {"mlp/gate_proj": (("mlp.gate_up_proj", 0),), "mlp/up_proj": (("mlp.gate_up_proj", 1),)}),
    ({"mlp/down_proj": _one("mlp.down_proj")},),
)

FAMILIES: dict[str, Family] = {f.architecture: f for f in [
    Family("Phi3ForCausalLM", "phi3", _PHI3_MODULES, _PHI3_LAYOUTS),
    Family("LlamaForCausalLM", "llama", _LLAMA_MODULES, _LLAMA_LAYOUTS),
    Family("MistralForCausalLM", "mistral", _LLAMA_MODULES, _LLAMA_LAYOUTS),
    Family("Qwen2ForCausalLM", "qwen2", _LLAMA_MODULES, _LLAMA_LAYOUTS),  # q/k/v bias: an Add after the MatMul
]}
SUPPORTED = sorted(FAMILIES)


def family_for_config(config: dict, where: str = "model") -> Family:
    """The family of an HF config (config.json as a dict), or a refusal naming the architecture."""
    archs = config.get("architectures") or []
    arch = archs[0] if archs else None
    fam = FAMILIES.get(arch)
    if fam is None:
        raise ModelmakeError(
            f"{where}: architecture {arch!r} is not supported (both AutoAWQ 0.2.9 and the "
            f"onnxruntime-genai builder must take it); supported: {', '.join(SUPPORTED)}"
        )
    if config.get("model_type") != fam.model_type:  # AutoAWQ dispatches on model_type, not the class
        raise ModelmakeError(
            f"{where}: architecture {arch} with model_type {config.get('model_type')!r}; "
            f"expected model_type {fam.model_type!r}"
        )
    return fam


def family_of_dir(model_dir: str | Path) -> Family:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ModelmakeError(f"{path}: missing; not a Hugging Face model folder")
    return family_for_config(json.loads(path.read_text()), str(path))


def widths(config: dict) -> dict[str, int]:
    """The named widths of a config (head_dim may be explicit and differ from hidden / heads)."""
    h, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or h // heads
    kv_heads = config.get("num_key_value_heads") or heads
    return {"hidden": h, "q": heads * head_dim, "kv": kv_heads * head_dim, "inter": config["intermediate_size"]}


def module_shapes(family: Family, config: dict) -> dict[str, tuple[int, int]]:
    """HF module -> (in_features, out_features) for this config."""
    w = widths(config)
    return {m: (w[i], sum(w[p] for p in parts)) for m, (i, parts) in family.modules.items()}


def part_columns(family: Family, config: dict, module: str, part: int) -> tuple[int, int]:
    """The [start, end) output columns of one part of a module."""
    w = widths(config)
    sizes = [w[p] for p in family.modules[module][1]]
    return sum(sizes[:part]), sum(sizes[: part + 1])


def resolve_lora_targets(value, family: Family, field: str = "lora.target_modules") -> list[str]:
    """peft target_modules: `auto` is every projection of the family; a list must name only
    modules the family has, short (`q_proj`) or full (`self_attn.q_proj`): peft matches either."""
    if isinstance(value, str):
        if value != "auto":
            raise ModelmakeError(f"config field '{field}': must be 'auto' or a list of module names, got {value!r}")
        return family.lora_targets
    names = [str(v) for v in value]
    if not names:
        raise ModelmakeError(f"config field '{field}': must name at least one module (or be 'auto')")
    bad = [n for n in names if n not in family.lora_targets and n not in family.modules]
    if bad:
        raise ModelmakeError(
            f"config field '{field}': {bad} name no module of {family.architecture} "
            f"(its modules: {family.lora_targets}, or 'auto')"
        )
    return names


def resolve_export_targets(value, family: Family, field: str = "export.lora_targets") -> list[str]:
    """HF modules (under model.layers.N.) that get LoRA inputs in the graph: `auto` is all of them,
    so one base graph takes an adapter on any subset. A list may use full (`self_attn.q_proj`) or
    short (`q_proj`) names."""
    if isinstance(value, str):
        if value != "auto":
            raise ModelmakeError(f"config field '{field}': must be 'auto' or a list of module names, got {value!r}")
        return list(family.modules)
    short = {m.rsplit(".", 1)[-1]: m for m in family.modules}
    out, bad = [], []
    for n in (str(v) for v in value):
        full = n if n in family.modules else short.get(n)
        (out if full else bad).append(full or n)
    if bad or not out:
        raise ModelmakeError(
            f"config field '{field}': {bad or '[]'} name no module of {family.architecture} "
            f"(its modules: {list(family.modules)}, or 'auto')"
        )
    return out


def all_target_names() -> set[str]:
    """Every name a LoRA target list may use for some supported family (short and full)."""
    names = set()
    for fam in FAMILIES.values():
        names.update(fam.modules)
        names.update(fam.lora_targets)
    return names
