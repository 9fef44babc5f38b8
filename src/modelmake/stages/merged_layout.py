"""What a merged artifact (export=int4_merged) holds, for the stages that read it: one
onnxruntime-genai model folder per route of merging. Apart from `layout`, which every stage
imports: a new name there would move every stage's key; this module imports it, not the reverse."""

from __future__ import annotations

from pathlib import Path

from modelmake.stages.layout import ADAPTER_FILE, MODEL_DIR

MERGED_ROUTES = ("rtn", "awq")   # merged/<key>/<route>/model


def merged_graph(merged_dir: Path, route: str) -> Path:
    """One route's model folder in a merged artifact."""
    return Path(merged_dir) / route / MODEL_DIR


def deployed(inputs: dict, route: str) -> tuple[Path, Path | None]:
    """What a point deploys, from a stage's inputs (stage -> node): the merged graph of `route`
    alone where the plan has a merged artifact (export=int4_merged), else the multi-LoRA graph and
    the adapter file."""
    if "merged" in inputs:
        return merged_graph(inputs["merged"].path, route), None
    return Path(inputs["export"].path) / MODEL_DIR, Path(inputs["adapter"].path) / ADAPTER_FILE
