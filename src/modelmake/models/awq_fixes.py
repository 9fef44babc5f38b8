"""Every work-around for AutoAWQ 0.2.9 on CPU, in one place, each with a test that catches its bug.

AutoAWQ is archived upstream and was only ever tested on CUDA. On CPU it has these traps
(../shared/notes/stack.md; tests/test_awq_fixes.py holds one test per fix):

Fixes 1 and 6 touch only the quantizer and live in `awq_quantizer` (so editing a loading fix
here never re-quantizes; the quantize stage does not import this module).

1. Silent weight corruption while quantizing: `AwqQuantizer._compute_best_scale` backs the
   weights up with `.cpu()` and then scales them in place. On CPU `.cpu()` returns the *same*
   tensor, so every "restore" keeps the scaled weights and each grid point compounds the last.
   Fix: `awq_quantizer.SafeAwqQuantizer` snapshots real copies.
2. With triton importable and no GPU, `WQLinear_GEMM` picks triton kernels that fail.
3. Its backward pass needs triton or CUDA kernels, so LoRA on the int4 base cannot train on CPU.
   Fix for 2 and 3: `use_torch_int4_matmul()` routes CPU tensors through a pure-torch dequantize +
   matmul that autograd differentiates (the base weights are buffers: no gradient, stays int4).
4. `from_quantized` switches to IPEX on CPU and IPEX cannot install with torch 2.13; it also
   defaults `trust_remote_code=True` and fuses layers (which peft cannot wrap).
5. Loading in fp32 turns the int4 scales to fp32 and the int4 matmul fails (`Half != float`).
   Fix for 4 and 5: `load_awq_model` builds the model from its config, swaps in `WQLinear_GEMM`
   (GEMM packing, what the ORT-genai builder reads), loads the safetensors, and casts only the
   non-quantized modules.
6. Not a bug, a cost: the clip search multiplies by broadcasting, memory-bound on CPU (most of a
   real model's quantize time). `awq_quantizer.SafeAwqQuantizer._compute_best_clip` computes the same errors
   with batched matrix products.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch

log = logging.getLogger(__name__)

with warnings.catch_warnings():  # AutoAWQ prints a deprecation banner on import
    warnings.simplefilter("ignore")
    from awq.modules.linear.gemm import WQLinear_GEMM
    from awq.utils.packing_utils import dequantize_gemm


# --- fixes 2 and 3 ---------------------------------------------------------------------------
def dequantized_weight(layer: WQLinear_GEMM, dtype=torch.float32) -> torch.Tensor:
    """The [in, out] weight an AWQ GEMM layer represents, as a dense tensor.

    AutoAWQ's `dequantize_gemm` unpacks the bit fields on every call, most of a SmolLM2 forward
    on CPU. The frozen base of a LoRA fine-tune never changes, so its fp16 result (exactly what
    upstream computes) is kept on the layer: 2 bytes a weight, half an fp32 copy."""
    w16 = getattr(layer, "_modelmake_w16", None)
    if w16 is None or w16.device != layer.qweight.device:
        w16 = dequantize_gemm(layer.qweight, layer.qzeros, layer.scales, layer.w_bit, layer.group_size)
        layer._modelmake_w16 = w16  # a plain attribute: not in the state dict, never saved
    return w16.to(dtype)


_original_forward = WQLinear_GEMM.forward


def _torch_forward(self: WQLinear_GEMM, x: torch.Tensor) -> torch.Tensor:
    if x.device.type != "cpu":
        return _original_forward(self, x)
    # Compute in fp32 on CPU: fp16 matmul there is slow and less exact; autograd gives the
    # input gradient LoRA needs, and the packed weights (buffers) get none.
    w = dequantized_weight(self, torch.float32)
    out = x.to(torch.float32) @ w
    if self.bias is not None:
        out = out + self.bias.to(torch.float32)
    return out.to(x.dtype)


def use_torch_int4_matmul() -> None:
    """Route every CPU forward/backward of `WQLinear_GEMM` through pure torch (idempotent)."""
    WQLinear_GEMM.forward = _torch_forward


# --- fixes 4 and 5 ---------------------------------------------------------------------------
def awq_quant_config(model_dir: Path) -> dict:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    q = cfg.get("quantization_config") or {}
    if q.get("quant_method") != "awq":
        raise ValueError(f"{model_dir}/config.json: quantization_config.quant_method is not 'awq'")
    return q


def load_awq_model(model_dir: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Load an AutoAWQ GEMM checkpoint as a transformers model with `WQLinear_GEMM` layers.

    No IPEX, no fusing, no remote code; int4 buffers stay as saved (scales fp16), everything else
    (embeddings, norms, lm_head) is cast to `dtype`.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = Path(model_dir)
    q = awq_quant_config(model_dir)
    if q.get("version", "gemm").lower() != "gemm":
        raise ValueError(f"{model_dir}: only AWQ GEMM packing is supported, found {q.get('version')}")
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    # transformers 5 would route a config carrying quantization_config through gptqmodel
    del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    skip = set(q.get("modules_to_not_convert") or [])
    for name, module in list(model.model.layers.named_modules()):
        if isinstance(module, torch.nn.Linear) and not any(s in name for s in skip):
            qlayer = WQLinear_GEMM(q["bits"], q["group_size"], module.in_features,
                                   module.out_features, module.bias is not None, "cpu")
            parent, _, child = name.rpartition(".")
            setattr(model.model.layers.get_submodule(parent) if parent else model.model.layers, child, qlayer)
    state = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    # a tied lm_head (SmolLM2, small Qwen2) is not in the checkpoint: tie_weights below fills it
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"{model_dir}: checkpoint does not match {type(model).__name__}: "
                         f"missing {sorted(set(missing) - tied)[:5]}, unexpected {unexpected[:5]}")
    for module in model.modules():
        if isinstance(module, WQLinear_GEMM):
            continue
        for pname, p in module.named_parameters(recurse=False):
            setattr(module, pname, torch.nn.Parameter(p.to(dtype), requires_grad=p.requires_grad))
    model.tie_weights()
    model.config.quantization_config = q  # keep the record, after construction
    # non-persistent buffers made at init (rotary inv_freq) are still on meta: rebuild them
    for name, module in list(model.named_modules()):
        if any(b.is_meta for b in module.buffers(recurse=False)):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, type(module)(config))
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise ValueError(f"{model_dir}: weights missing from the checkpoint: {leftover[:5]}")
    model.to(device)
    use_torch_int4_matmul()
    model.eval()
    return model


# the tokenizer and generation files of a checkpoint folder, carried along when it is rewritten
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "special_tokens_map.json", "generation_config.json")


@torch.no_grad()
def dequantize_checkpoint(awq_dir: Path, out: Path) -> None:
    """Write the AWQ checkpoint as a plain fp32 HF model (same weights, dense)."""
    model = load_awq_model(awq_dir, dtype=torch.float32)
    for name, module in list(model.named_modules()):
        if isinstance(module, WQLinear_GEMM):
            dense = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            dense.weight.copy_(dequantized_weight(module).T)
            if module.bias is not None:
                dense.bias.copy_(module.bias.float())
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, dense)
    del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    for f in TOKENIZER_FILES:
        if (Path(awq_dir) / f).exists():
            (Path(out) / f).write_bytes((Path(awq_dir) / f).read_bytes())
