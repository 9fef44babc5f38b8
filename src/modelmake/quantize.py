"""The quantize stage: AWQ 4-bit with AutoAWQ into an AWQ GEMM checkpoint.

Calibration samples come from the training split. Group size, zero point, clip search and
sample counts come from config. AutoAWQ's CPU traps are handled in `awq_fixes`.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch

from modelmake.awq_fixes import SafeAwqQuantizer
from modelmake.base_model import model_location
from modelmake.dataset import read_split
from modelmake.errors import ModelmakeError
from modelmake.families import family_for_config, widths
from modelmake.provenance import dir_size

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


def calibration_texts(dataset_dir: Path, n: int) -> list[str]:
    texts = [r["text"] for r in read_split(dataset_dir, "train")]
    return texts[:n]


def quantize(model_path: str, out: Path, q, texts: list[str], trust_remote_code: bool, revision=None) -> None:
    from transformers import AutoConfig, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from awq import AutoAWQForCausalLM

    kw = {"revision": revision} if revision else {}
    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code, **kw)
    family_for_config(config.to_dict(), model_path)  # before any work: AutoAWQ and the builder must take it
    check_group_size(config, q.group_size)
    tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code, **kw)
    device_map = "auto" if torch.cuda.is_available() else "cpu"
    model = AutoAWQForCausalLM.from_pretrained(
        model_path, trust_remote_code=trust_remote_code, safetensors=True,
        torch_dtype=torch.float16, device_map=device_map, **({"download_kwargs": kw} if kw else {}),
    )
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
    model.save_quantized(str(out))
    tok.save_pretrained(out)


@torch.no_grad()
def rtn_quantize_(model, w_bit: int, group_size: int, zero_point: bool) -> None:
    """Round-to-nearest int4 of every decoder linear, in place (weights stay dense, dequantized):
    the baseline AWQ is measured against, with AutoAWQ's own group quantizer and no scaling."""
    from modelmake.awq_fixes import AwqQuantizer

    q = object.__new__(AwqQuantizer)  # only its quantize-a-tensor math, no calibration state
    q.w_bit, q.group_size, q.zero_point = w_bit, group_size, zero_point
    for layer in model.model.layers:
        for module in layer.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.data = q.pseudo_quantize_tensor(module.weight.data)[0]


def build(node, out: Path, cfg) -> dict:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    texts = calibration_texts(node.inputs["dataset"].path, cfg.quantize.calib_samples)
    src = model_location(node.inputs["base"].path)
    revision = cfg.model.get("revision") if cfg.model.kind == "pretrained" else None
    quantize(src, out / "model", cfg.quantize, texts, bool(cfg.model.trust_remote_code), revision)
    qcfg = json.loads((out / "model" / "config.json").read_text())["quantization_config"]
    return {"calibration_samples": len(texts), "size_bytes": dir_size(out / "model"), "quantization_config": qcfg}
