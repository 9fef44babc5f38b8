"""The recipe's stages, in dependency order: each is declared here once. The Snakefile makes one
rule per row (rules/stages.smk), `python -m modelmake stage NAME` runs one (its module's `build`),
dvc.yaml is generated from the plan over these rows, and resources come from conf/resources/.

A row names the config groups keyed into its artifact, its input stages and the libraries whose
versions it depends on; its code key starts at `modelmake.stages.<name>` (graph.codeversion).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from modelmake.core.errors import ModelmakeError
from modelmake.core.hashing import file_sha256
from modelmake.core.paths import ROOT
from modelmake.graph import remote
from modelmake.graph.plan import Recipe, StageSpec
from modelmake.models import sources
from modelmake.recipe.checks import FREE_TEXT, check


def _data_file(field_name: str, value: str) -> Path:
    path = Path(value)
    full = path if path.is_absolute() else ROOT / path
    if not full.exists():
        raise ModelmakeError(f"config field '{field_name}': data file not found: {value}")
    if full.is_dir():
        raise ModelmakeError(f"config field '{field_name}': {value} is a directory, not a data file")
    if not full.is_file():
        raise ModelmakeError(f"config field '{field_name}': {value} is not a regular file")
    return full


def dataset_data(cfg: DictConfig) -> dict[str, str]:
    if remote.is_remote(cfg.data.path):  # a blob: keyed by its content, read from its local copy
        return {cfg.data.path: remote.fetch(cfg.data.path)[0]}
    return {cfg.data.path: file_sha256(_data_file("data.path", cfg.data.path))}


def base_data(cfg: DictConfig) -> dict[str, str]:
    return sources.resolve(cfg.model).files


def merged(cfg: DictConfig) -> bool:
    """`export=int4_merged`: a graph with the adapter merged, deployed instead of graph + adapter."""
    return cfg.export.get("merge") is not None


def generate_inputs(cfg: DictConfig) -> tuple[str, ...]:
    # the merged graph answers for the fine-tune; the base graph (no adapter) beside it
    return ("dataset", "export", "merged") if merged(cfg) else ("dataset", "export", "adapter")


def evaluate_inputs(cfg: DictConfig) -> tuple[str, ...]:
    both = ("dataset", "quantize", "finetune", "export", "adapter", "quality")
    return (*both, "base", "merged") if merged(cfg) else both  # the base: the fp32+LoRA reference


def register_inputs(cfg: DictConfig) -> tuple[str, ...]:
    return ("merged", "generate") if merged(cfg) else ("export", "adapter", "generate")


TORCH = ("torch", "transformers", "safetensors")
ONNX = ("onnx", "onnx-ir", "onnxruntime", "onnxruntime-genai")
STAGES = (
    # a model preset's defaults for other stages (data.template, export.accuracy_level and
    # export.lm_head read them, keyed there): not what the base is made of
    StageSpec("base", "the base model: the tiny Phi-3, a dequantized GGUF, a copied folder or a hub reference",
              ("model",), (), (*TORCH, "tokenizers", "gguf"), data=base_data,
              unkeyed=("model.cpu_lm_head", "model.cpu_accuracy_level", "model.template", "model.response_marker")),
    # rendered for a model: with data.template=chat, through its tokenizer's template
    StageSpec("dataset", "train.jsonl / eval.jsonl: validated, rendered, split without leaks",
              ("data",), ("base",), ("transformers", "tokenizers"), data=dataset_data),
    StageSpec("quantize", "AutoAWQ 4-bit GEMM checkpoint, calibrated on the training split",
              ("quantize",), ("base", "dataset"), (*TORCH, "autoawq")),
    StageSpec("finetune", "peft LoRA adapter trained on the int4 base (QLoRA-style)",
              ("lora", "train"), ("quantize", "dataset"), (*TORCH, "autoawq", "peft")),
    StageSpec("export", "onnxruntime-genai int4 graph of the AWQ weights, LoRA weights as optional inputs",
              ("export",), ("quantize",), ("torch", "transformers", "autoawq", *ONNX), unkeyed=("export.merge",)),
    StageSpec("adapter", "the LoRA adapter as an .onnx_adapter, checked against the graph",
              (), ("finetune", "export"), ("onnx", "onnxruntime", "onnxruntime-genai", "safetensors", "numpy")),
    # the adapter merged into the weights (export=int4_merged), one graph with no LoRA inputs, by two
    # routes: Olive's (into the dequantized AWQ weights, then round-to-nearest int4) and modelmake's
    # (into the fp32 base, then AWQ again on the same calibration texts); a LoRA-only change rebuilds
    # it and never the multi-LoRA graph
    StageSpec("merged", "the adapter merged: int4 graphs without LoRA inputs, by RTN and by AWQ re-run",
              ("export", "quantize"), ("base", "dataset", "quantize", "finetune"), (*TORCH, "autoawq", "peft", *ONNX),
              when=merged, asked_by="export.merge", unkeyed=("export.merge", "export.lora_targets")),
    StageSpec("generate", "a streamed generation with the adapter active, the base model's answer beside it",
              ("generate", "export.merge"), generate_inputs, ("onnxruntime-genai",)),
    # what quantization cost, keyed without the fine-tune: once per quantized model, not per adapter
    StageSpec("quality", "held-out perplexity and KL from fp32 of the fp32 base, RTN int4 and AWQ int4",
              ("evaluate",), ("base", "dataset", "quantize"), (*TORCH, "autoawq"),
              unkeyed=("evaluate.speed", "evaluate.parity_records")),  # evaluate's own: no decode, no ONNX here
    StageSpec("evaluate", "perplexities (AWQ+LoRA, ONNX+LoRA) beside quality's, parity, accuracy, speed, sizes",
              ("evaluate",), evaluate_inputs, (*TORCH, "autoawq", "peft", "onnxruntime", "onnxruntime-genai")),
    StageSpec("register", "the ONNX model + adapter (or the merged graph) as a versioned model asset (MLflow/Azure ML)",
              ("register", "export.merge"), register_inputs, ("mlflow", "azure-ai-ml"), shared=False),
    StageSpec("report", "one page over every point of a run or sweep: tables, plots, generations",
              ("report",), ("evaluate", "finetune", "generate"), ("matplotlib",), over_points=True,
              outputs=("report.html",), shared=False),
)

RECIPE = Recipe(
    stages=STAGES,
    final="register",
    # fields naming data files: keyed by the files' content (the stage's data), not by where they lie
    path_fields={"data": ("path",), "model": ("corpus", "source", "package")},
    free_text=FREE_TEXT,
    check=check,
)
