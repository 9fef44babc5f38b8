"""The export stage: an onnxruntime-genai model folder with LoRA weights as optional inputs.

`int4`: the ORT-genai model builder reads the AWQ checkpoint itself, so AWQ's int4 weights
(not a re-quantization) go into `MatMulNBits`. `fp32`: the AWQ weights, dequantized, as a dense
fp32 graph: what an exact ONNX-vs-PyTorch parity check compares. Either way the LoRA pass of
`onnx_lora` then makes one base graph serve every adapter.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import onnx

from modelmake.core.atomic import scratch_dir
from modelmake.core.manifest import dir_size
from modelmake.models.builder import pin_producer, run_builder, smoke_test
from modelmake.models.families import family_for_config, resolve_export_targets
from modelmake.models.onnx_lora import add_lora_inputs

__all__ = ["add_lora", "build", "run_builder", "smoke_test"]

log = logging.getLogger(__name__)


def add_lora(model_dir: Path, config: dict, targets: list[str]) -> dict:
    path = model_dir / "model.onnx"
    model = onnx.load(path, load_external_data=False)  # weights stay in model.onnx.data untouched
    spec = add_lora_inputs(model, config, list(targets))
    pin_producer(model)
    onnx.save(model, path)
    (model_dir / "lora_inputs.json").write_text(json.dumps(spec, indent=2))
    return spec


def build(node, out: Path, cfg) -> dict:
    e = cfg.export
    awq_dir = node.inputs["quantize"].path / "model"
    config = json.loads((awq_dir / "config.json").read_text())
    targets = resolve_export_targets(e.lora_targets, family_for_config(config, str(awq_dir / "config.json")))
    num_layers = config["num_hidden_layers"]
    with scratch_dir("export") as scratch:
        src = awq_dir
        if e.precision == "fp32":
            # imported here: AutoAWQ takes ~5 s to import, and the int4 export never needs it (the
            # builder reads the AWQ checkpoint itself)
            from modelmake.models.awq_fixes import dequantize_checkpoint

            src = scratch / "dense"
            dequantize_checkpoint(awq_dir, src)
        # the builder's log lives beside the stage's own: it outlasts a failed build's temporary folder,
        # and it holds times, which the artifact must not
        run_builder(src, out / "model", e, scratch / "cache", Path("logs") / "export" / f"{node.key}.builder.log")
    spec = add_lora(out / "model", config, targets)
    metrics = {"size_bytes": dir_size(out / "model"), "lora_inputs": len(spec["inputs"]),
               "activation_dtype": spec["dtype"], "num_layers": num_layers}
    if e.execution_provider == "cpu":
        metrics["smoke_max_abs_logit"] = smoke_test(out / "model")
    return metrics
