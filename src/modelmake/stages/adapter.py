"""The adapter stage: a peft adapter as an `.onnx_adapter` for the exported graph.

Names, shapes and ranks are checked against the graph's LoRA inputs before anything is written
(`onnx_lora.write_adapter`); then onnxruntime-genai itself loads the file on the graph and runs a
token with it active, so a file that would fail at run time fails here.
"""

from __future__ import annotations

from pathlib import Path

from modelmake.models.onnx_lora import write_adapter
from modelmake.stages.layout import ADAPTER_FILE


def check_loads(model_dir: Path, adapter_path: Path) -> None:
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    adapters = og.Adapters(model)
    adapters.load(str(adapter_path), "check")
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=16)
    gen = og.Generator(model, params)
    gen.set_active_adapter(adapters, "check")
    gen.append_tokens(og.Tokenizer(model).encode("Hello"))


def build(node, out: Path, cfg) -> dict:
    model_dir = node.inputs["export"].path / "model"
    info = write_adapter(node.inputs["finetune"].path / "adapter", model_dir, out / ADAPTER_FILE)
    if cfg.export.execution_provider == "cpu":
        check_loads(model_dir, out / ADAPTER_FILE)
    return info | {"size_bytes": (out / ADAPTER_FILE).stat().st_size}
