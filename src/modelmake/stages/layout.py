"""What stages share about artifact folders: the files one stage writes and another reads."""

from __future__ import annotations

import json
from pathlib import Path

ADAPTER_FILE = "adapter.onnx_adapter"   # adapter/<key>/: the .onnx_adapter
TEMPLATE_FILE = "template.json"         # dataset/<key>/: the text template the records were rendered with
MODEL_DIR = "model"                     # base, quantize, export: the model folder inside the artifact


def read_split(dataset_dir: Path, name: str) -> list[dict]:
    """A dataset artifact's `train` or `eval` records, rendered."""
    with (Path(dataset_dir) / f"{name}.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def load_template(dataset_dir: Path) -> tuple[str, str]:
    """The text template and response marker a dataset was rendered with (generate and evaluate
    render prompts with it, so a chat-template dataset and its prompts agree)."""
    t = json.loads((Path(dataset_dir) / TEMPLATE_FILE).read_text())
    return t["template"], t["response_marker"]


def model_location(base_dir: Path) -> str:
    """Where later stages load the base from: the artifact's own folder, or a hub reference."""
    ref = Path(base_dir) / "source.json"
    if ref.exists():
        return json.loads(ref.read_text())["source"]
    return str(Path(base_dir) / MODEL_DIR)


def model_revision(base_dir: Path) -> str | None:
    """The revision a hub reference was pinned to (None: the artifact holds the model itself);
    every stage loading the base passes it, so what they load is what the base's key says."""
    ref = Path(base_dir) / "source.json"
    return json.loads(ref.read_text()).get("revision") if ref.exists() else None
