"""The quantize stage: AWQ 4-bit with AutoAWQ into an AWQ GEMM checkpoint.

Calibration samples come from the training split. Group size, zero point, clip search and
sample counts come from config. AutoAWQ's CPU traps are handled in `awq_quantizer` and `awq_fixes`.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import torch

from modelmake.core.errors import ModelmakeError
from modelmake.core.manifest import dir_size
from modelmake.models.awq_quantizer import SafeAwqQuantizer
from modelmake.models.families import family_for_config, widths
from modelmake.stages.layout import model_location, model_revision, read_split

log = logging.getLogger(__name__)


def check_group_size(config, group_size: int) -> None:
    """Refuse before any work when the group size does not divide every quantized input width
    (o_proj reads heads * head_dim, which differs from hidden_size where head_dim is explicit)."""
    w = widths(config.to_dict())
    for name, width in (("hidden_size", w["hidden"]), ("intermediate_size", w["inter"]),
                        ("num_attention_heads * head_dim", w["q"])):
        if width % group_size:
            raise ModelmakeError(
                f"quantize.group_size={group_size} does not divide the model's {name}={width}"
            )


def calibration_dtype(cuda: bool) -> torch.dtype:
    """fp16 on a GPU, as AutoAWQ expects; fp32 on CPU, where fp16 matrix products are ~20x slower
    (measured on 2 cores: fp16 2.1 GFLOPS, bf16 145, fp32 43; AWQ per SmolLM2 layer fp16 156 s,
    bf16 57 s, fp32 40 s). The search itself is the same algorithm in either dtype."""
    return torch.float16 if cuda else torch.float32


def calibration_texts(dataset_dir: Path, n: int) -> list[str]:
    texts = [r["text"] for r in read_split(dataset_dir, "train")]
    return texts[:n]


def quantize(model_path: str, out: Path, q, texts: list[str], trust_remote_code: bool, revision=None) -> dict:
    from transformers import AutoConfig, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from awq import AutoAWQForCausalLM

    kw = {"revision": revision} if revision else {}
    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code, **kw)
    family_for_config(config.to_dict(), model_path)  # before any work: AutoAWQ and the builder must take it
    check_group_size(config, q.group_size)
    tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code, **kw)
    cuda = torch.cuda.is_available()
    model = AutoAWQForCausalLM.from_pretrained(
        model_path, trust_remote_code=trust_remote_code, safetensors=True,
        torch_dtype=calibration_dtype(cuda), device_map="auto" if cuda else "cpu",
        **({"download_kwargs": kw} if kw else {}),
    )
    t0 = time.perf_counter()
    model.quantize(
        tok,
        quant_config={"zero_point": q.zero_point, "q_group_size": q.group_size, "w_bit": q.w_bit,
                      "version": str(q.version).upper()},
        calib_data=texts,
        max_calib_samples=q.calib_samples,
        max_calib_seq_len=q.calib_seq_len,
        apply_clip=q.apply_clip,
        duo_scaling=q.duo_scaling,
        quantizer_cls=SafeAwqQuantizer,
    )
    seconds = time.perf_counter() - t0
    # The standard AWQ GEMM checkpoint whatever the calibration dtype: int4 weights with fp16
    # scales (AutoAWQ casts those itself) and fp16 everything else, as a CUDA run writes it.
    model.model.half()
    model.save_quantized(str(out))
    tok.save_pretrained(out)
    flops = model.quantizer.search_flops
    return {"search_seconds": seconds, "search_gflop_scale": flops["scale"] / 1e9,
            "search_gflop_clip": flops["clip"] / 1e9, "hidden_size": config.hidden_size}


def gemm_gflops(width: int, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """This machine's matrix-product speed now, with the threads the stage has: the floor the
    AWQ search is set against (its work is mostly products of [tokens, width] activations)."""
    a, b = torch.randn(2048, width, dtype=dtype), torch.randn(width, 4 * width, dtype=dtype)
    a @ b  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return n * 2.0 * 2048 * width * 4 * width / (time.perf_counter() - t0) / 1e9


def build(node, out: Path, cfg) -> dict:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    texts = calibration_texts(node.inputs["dataset"].path, cfg.quantize.calib_samples)
    src = model_location(node.inputs["base"].path)
    run = quantize(src, out / "model", cfg.quantize, texts, bool(cfg.model.trust_remote_code),
                   model_revision(node.inputs["base"].path))
    qcfg = json.loads((out / "model" / "config.json").read_text())["quantization_config"]
    # how far the search is from its floor: its FLOPs at this machine's GEMM speed, measured now
    gflops = gemm_gflops(run.pop("hidden_size"), calibration_dtype(torch.cuda.is_available()))
    floor = (run["search_gflop_scale"] + run["search_gflop_clip"]) / gflops
    log.info("quantize: AWQ search %.1f s, floor %.1f s (%.0f GFLOP at %.0f GFLOPS): %.2fx",
             run["search_seconds"], floor, run["search_gflop_scale"] + run["search_gflop_clip"], gflops,
             run["search_seconds"] / floor)
    measured = {"search_seconds": run.pop("search_seconds"), "gemm_gflops": gflops, "search_floor_seconds": floor}
    measured["search_floor_ratio"] = measured["search_seconds"] / floor
    return run | {"calibration_samples": len(texts), "size_bytes": dir_size(out / "model"), "quantization_config": qcfg,
                  "measured": measured}
