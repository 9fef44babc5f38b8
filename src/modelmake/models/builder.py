"""The onnxruntime-genai model builder as the export and merged stages run it: its command line
from an export config (precision, execution provider, activation accuracy, the LM head), its
failures as one line, a rebuild byte-identical (the producer version pinned), and a smoke test of
what it built. Apart from the export stage so that the merged graph's key does not follow the
LoRA pass it never runs."""

from __future__ import annotations

import logging
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import onnx

from modelmake.core.errors import ModelmakeError
from modelmake.core.lifecycle import pdeathsig

log = logging.getLogger(__name__)


def run_builder(src: Path, out: Path, e, cache: Path, log_path: Path, extra: tuple[str, ...] = ()) -> None:
    """The onnxruntime-genai builder on the HF folder `src` (an AWQ checkpoint: its int4 weights go
    into MatMulNBits as they are; a dense one: the builder quantizes it by round-to-nearest), with
    the export config's options and `extra` builder options (key=value)."""
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(out),
           "-p", e.precision, "-e", e.execution_provider, "-c", str(cache), "--extra_options", "hf_token=false"]
    if e.precision == "int4":
        cmd.append(f"accuracy_level={e.accuracy_level}")
        if e.exclude_lm_head:
            cmd += head_options(e.get("lm_head", "fp32"))
    cmd += extra  # last: the builder keeps the last value of a key
    log.info("builder: %s", " ".join(cmd))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, preexec_fn=pdeathsig)  # dies with the stage
    if proc.returncode == 0 and (out / "model.onnx").exists() and e.precision == "int4" and e.exclude_lm_head \
            and e.get("lm_head", "fp32") != "fp32" and e.execution_provider == "cpu":
        head_int8_activations(out)
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
    (`matmul_mixed_precision=last_matmul:int8`), `int4` to 4 bits, at its own block size (32); on
    CPU either runs with int8 activations (`head_int8_activations`). The Gather then keeps its own
    full-precision table (read one row a token): `shared_embeddings` did not change that in 0.18."""
    if head not in HEADS:
        raise ModelmakeError(f"config field 'export.lm_head': must be one of {', '.join(HEADS)}, got {head!r}")
    if head == "fp32":
        return ["nodes_to_exclude=/lm_head/MatMul,/model/embed_tokens/Gather"]
    out = ["nodes_to_exclude=/model/embed_tokens/Gather"]
    return out + (["matmul_mixed_precision=last_matmul:int8"] if head == "int8" else [])


def head_int8_activations(model_dir: Path) -> None:
    """The rounded LM head's MatMulNBits at accuracy_level 4 (int8 activations), whatever the body's.
    onnxruntime 1.31's CPU kernel for 8-bit weights with fp32 activations (level 1) dequantizes the
    whole matrix every call: SmolLM2 decoded at 1.8 tokens/s with it, 18.6 with the fp32 head, 22.9
    with the int8 head at level 4 (same run, loaded machine). At level 4 the int8 head moved held-out
    KL from the fp32-head graph by 0.0009 (0.00026 at level 1): bench/decode.py measures both."""
    path = Path(model_dir) / "model.onnx"
    model = onnx.load(path, load_external_data=False)
    for node in model.graph.node:
        if node.op_type == "MatMulNBits" and node.name.startswith("/lm_head/"):
            for a in node.attribute:
                if a.name == "accuracy_level":
                    a.i = 4
    onnx.save(model, path)


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


