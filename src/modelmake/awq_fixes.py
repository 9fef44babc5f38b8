"""Every work-around for AutoAWQ 0.2.9 on CPU, in one place, each with a test that catches its bug.

AutoAWQ is archived upstream and was only ever tested on CUDA. On CPU it has these traps
(../shared/notes/stack.md; tests/test_awq_fixes.py holds one test per fix):

1. Silent weight corruption while quantizing: `AwqQuantizer._compute_best_scale` backs the
   weights up with `.cpu()` and then scales them in place. On CPU `.cpu()` returns the *same*
   tensor, so every "restore" keeps the scaled weights and each grid point compounds the last.
   Fix: `SafeAwqQuantizer` snapshots real copies.
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
   real model's quantize time). `SafeAwqQuantizer._compute_best_clip` computes the same errors
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
    from awq.quantize.quantizer import AwqQuantizer
    from awq.utils.packing_utils import dequantize_gemm


# --- fixes 1 and 6 ---------------------------------------------------------------------------
def _linear_params(module: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


class SafeAwqQuantizer(AwqQuantizer):
    """AwqQuantizer whose scale search restores the real original weights after each grid point
    (fix 1), whose clip search runs as batched matrix products (fix 6), and which counts the
    floating-point work of both searches, so a run can be set against the machine's GEMM speed."""

    N_GRID = 20  # AutoAWQ's grid for both searches (its code has it as a literal)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.search_flops = {"scale": 0.0, "clip": 0.0}

    def _search_best_scale(self, module, prev_op, layers, inp, module2inspect=None, kwargs={}):
        inspected = module2inspect if module2inspect is not None else layers[0]
        tokens = inp.numel() // inp.shape[-1]
        # one reference forward + one per grid point, each ~2 FLOPs per weight per token
        self.search_flops["scale"] += (self.N_GRID + 1) * 2.0 * tokens * _linear_params(inspected)
        return super()._search_best_scale(module, prev_op, layers, inp, module2inspect, kwargs)

    def _compute_best_scale(self, x, w_mean, x_mean, module2inspect, linears2scale, fp16_output, kwargs={}):
        original = module2inspect.state_dict

        def cloned_state_dict(*args, **kw):
            return {k: v.detach().clone() for k, v in original(*args, **kw).items()}

        module2inspect.state_dict = cloned_state_dict  # shadows the method on this instance only
        try:
            return super()._compute_best_scale(
                x, w_mean, x_mean, module2inspect, linears2scale, fp16_output, kwargs
            )
        finally:
            del module2inspect.state_dict


    @torch.no_grad()
    def _compute_best_clip(self, w, input_feat, n_grid=20, max_shrink=0.5, n_sample_token=512):
        """AutoAWQ's clip search, same grid and same error, with each group's output computed as a
        batched matrix product instead of a broadcast multiply-and-sum: upstream materializes a
        [out, tokens, groups, group_size] tensor per grid point, memory-bound on CPU (~20 s of a
        SmolLM2 layer's 28 s); `torch.bmm` does the same FLOPs at GEMM speed."""
        assert w.dim() == 2
        out_f, in_f = w.shape
        gs = self.group_size if self.group_size > 0 else in_f
        x = input_feat.reshape(-1, in_f)
        x = x[:: max(1, x.shape[0] // n_sample_token)]                   # the same tokens upstream samples
        xg = x.reshape(x.shape[0], -1, gs).transpose(0, 1).contiguous()  # [groups, tokens, gs]
        wg = w.reshape(out_f, -1, gs)                                    # [out, groups, gs]
        org_max = wg.abs().amax(dim=-1, keepdim=True)                    # [out, groups, 1]
        org_out = torch.bmm(xg, wg.permute(1, 2, 0))                     # [groups, tokens, out]
        best_max = org_max.clone()
        min_errs = torch.full_like(org_max, 1e9)
        shrinks = int(max_shrink * n_grid)
        for i_s in range(shrinks):
            max_val = org_max * (1 - i_s / n_grid)
            q_w = self.pseudo_quantize_tensor(torch.clamp(wg, -max_val, max_val).reshape(out_f, in_f))[0]
            cur_out = torch.bmm(xg, q_w.reshape(out_f, -1, gs).permute(1, 2, 0))
            err = (cur_out - org_out).pow(2).mean(dim=1).T.unsqueeze(-1)  # [out, groups, 1]
            better = err < min_errs
            min_errs[better] = err[better]
            best_max[better] = max_val[better]
        self.search_flops["clip"] += (shrinks + 1) * 2.0 * x.shape[0] * out_f * in_f
        return best_max  # [out, groups, 1], as upstream returns it


# --- fixes 2 and 3 ---------------------------------------------------------------------------
def dequantized_weight(layer: WQLinear_GEMM, dtype=torch.float32) -> torch.Tensor:
    """The [in, out] weight an AWQ GEMM layer represents, as a dense tensor."""
    w = dequantize_gemm(layer.qweight, layer.qzeros, layer.scales, layer.w_bit, layer.group_size)
    return w.to(dtype)


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
