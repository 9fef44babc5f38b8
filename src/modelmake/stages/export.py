"""The export stage: an onnxruntime-genai model folder with LoRA weights as optional inputs.

`int4`: the ORT-genai model builder reads the AWQ checkpoint itself, so AWQ's int4 weights
(not a re-quantization) go into `MatMulNBits`. `fp32`: the AWQ weights, dequantized, as a dense
fp32 graph: what an exact ONNX-vs-PyTorch parity check compares. Either way the LoRA pass of
`onnx_lora` then makes one base graph serve every adapter.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import onnx

from modelmake.core.atomic import scratch_dir
from modelmake.core.errors import ModelmakeError
from modelmake.core.lifecycle import pdeathsig
from modelmake.core.manifest import dir_size
from modelmake.models.families import family_for_config, resolve_export_targets
from modelmake.models.onnx_lora import add_lora_inputs

log = logging.getLogger(__name__)


def run_builder(src: Path, out: Path, e, cache: Path, log_path: Path, extra: tuple[str, ...] = ()) -> None:
    """The onnxruntime-genai builder on the HF folder `src` (an AWQ checkpoint: its int4 weights go
    into MatMulNBits as they are; a dense one: the builder quantizes it by round-to-nearest), with
    the export config's options and `extra` builder options (key=value)."""
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(out),
           "-p", e.precision, "-e", e.execution_provider, "-c", str(cache), "--extra_options", "hf_token=false",
           *extra]
    if e.precision == "int4":
        cmd.append(f"accuracy_level={e.accuracy_level}")
        if e.exclude_lm_head:
            cmd += head_options(e.get("lm_head", "fp32"))
    log.info("builder: %s", " ".join(cmd))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, preexec_fn=pdeathsig)  # dies with the stage
    if proc.returncode != 0 or not (out / "model.onnx").exists():
        text = log_path.read_text(errors="replace")
        cause = next((c for c in ("No space left on device", "Disk quota exceeded", "Cannot allocate memory",
                                  "out of memory") if c in text), None)
        lines = [line for line in text.splitlines() if line.strip()]
        last = cause or (lines[-1] if lines else "no output")
        raise ModelmakeError(f"onnxruntime-genai builder failed (exit {proc.returncode}): {last}; its log: {log_path}")


HEADS = ("fp32", "int8", "int4")


def head_options(head: str) -> list[str]:
    """Builder options for the LM head (`export.lm_head`) of an int4 graph, the token embeddings kept
    in full precision. AWQ keeps lm_head and the embeddings unquantized. For a model with tied
    embeddings (SmolLM2, small Qwen2) the builder would RTN-quantize the embedding table to int4
    (GatherBlockQuantized): on SmolLM2 that moved logits by up to 9 against the torch AWQ model and
    held-out perplexity by 7 %. So the Gather is always excluded; `fp32` excludes the head too (the
    builder then shares lm_head's matrix with the Gather), `int8` has the builder round it to 8 bits
    (`matmul_mixed_precision=last_matmul:int8`), `int4` to 4 bits, at its own block size."""
    if head not in HEADS:
        raise ModelmakeError(f"config field 'export.lm_head': must be one of {', '.join(HEADS)}, got {head!r}")
    if head == "fp32":
        return ["nodes_to_exclude=/lm_head/MatMul,/model/embed_tokens/Gather"]
    out = ["nodes_to_exclude=/model/embed_tokens/Gather"]
    return out + (["matmul_mixed_precision=last_matmul:int8"] if head == "int8" else [])


def add_lora(model_dir: Path, config: dict, targets: list[str]) -> dict:
    path = model_dir / "model.onnx"
    model = onnx.load(path, load_external_data=False)  # weights stay in model.onnx.data untouched
    spec = add_lora_inputs(model, config, list(targets))
    pin_producer(model)
    onnx.save(model, path)
    (model_dir / "lora_inputs.json").write_text(json.dumps(spec, indent=2))
    return spec


def pin_producer(model: onnx.ModelProto) -> None:
    """The builder stamps `0.18.0+<commit>`-style versions that vary by install: one per version
    keeps a rebuild byte-identical."""
    model.producer_version = version("onnxruntime-genai")


def pin_producer_file(model_dir: Path) -> None:
    path = Path(model_dir) / "model.onnx"
    model = onnx.load(path, load_external_data=False)
    pin_producer(model)
    onnx.save(model, path)


def smoke_test(model_dir: Path) -> float:
    """Load the graph with onnxruntime-genai and run a short prompt: finite, non-zero logits or refuse."""
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=16)
    gen = og.Generator(model, params)
    gen.append_tokens(og.Tokenizer(model).encode("Hello"))
    logits = np.asarray(gen.get_logits())
    if not np.isfinite(logits).all() or not np.abs(logits).max() > 0:
        raise ModelmakeError(f"{model_dir}: exported graph produces non-finite logits")
    return float(np.abs(logits).max())


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
