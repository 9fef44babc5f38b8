"""What a merged artifact (export=int4_merged) holds, for the stages that read it: one
onnxruntime-genai model folder per route of merging. Apart from `layout`, which every stage
imports: a new name there would move every stage's key."""

from __future__ import annotations

from pathlib import Path

MERGED_ROUTES = ("rtn", "awq")   # merged/<key>/<route>/model
MODEL_DIR = "model"


def merged_graph(merged_dir: Path, route: str) -> Path:
    """One route's model folder in a merged artifact."""
    return Path(merged_dir) / route / MODEL_DIR
