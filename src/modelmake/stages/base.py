"""The base stage: the model every later stage starts from, as a folder inside the artifact.

- `kind: tiny`: the tiny Phi-3 fixture, made here (models.tiny);
- `kind: gguf`: a GGUF file dequantized into a safetensors folder (models.gguf);
- `kind: pretrained`, a local folder: its files copied into the artifact (cloned where the file
  system can), each checked against the sha256 the key was computed from while it is copied, so
  the artifact holds exactly the weights its key names whatever later happens to the folder, and
  every later stage loads from the artifact, never from a folder another build keyed;
- `kind: pretrained`, a hub id: a reference (`source.json`) to the id at its pinned revision.
"""

from __future__ import annotations

import json
from pathlib import Path

from modelmake.core.atomic import copy_file
from modelmake.core.errors import ModelmakeError
from modelmake.core.paths import ROOT
from modelmake.models.gguf import dequantize_gguf
from modelmake.models.tiny import build_tiny
from modelmake.stages.layout import MODEL_DIR


def copy_folder(folder: Path, files: dict[str, str], out: Path) -> int:
    """Copy the folder's files the plan hashed into `out`, refusing any whose content moved since."""
    total = 0
    for path, expected in sorted(files.items()):
        rel = Path(path).relative_to(folder)
        try:
            got = copy_file(path, out / rel)
        except OSError as e:
            raise ModelmakeError(f"model.source: cannot read {path}: {e.strerror}") from None
        if got != expected:
            raise ModelmakeError(f"model.source: {path} changed since the plan was made (sha256 {got[:12]}, "
                                 f"the key was made from {expected[:12]}); run the build again")
        total += (out / rel).stat().st_size
    return total


def build(node, out: Path, cfg) -> dict:
    m = cfg.model
    if m.kind == "tiny":
        return build_tiny(m, Path(m.corpus), out / MODEL_DIR, cfg.threads)
    if m.kind == "gguf":
        (gguf,) = node.data  # the one file the key names, by content
        return dequantize_gguf(Path(gguf), out / MODEL_DIR, m.dtype, cfg.threads)
    source = Path(m.source) if Path(m.source).is_absolute() else ROOT / m.source
    if source.is_dir():
        size = copy_folder(source, node.data, out / MODEL_DIR)
        return {"source": str(source), "files": len(node.data), "size_bytes": size}
    # a hub id at a pinned revision: the hub's own cache holds it by commit
    (out / "source.json").write_text(json.dumps(
        {"source": m.source, "revision": m.revision, "trust_remote_code": bool(m.trust_remote_code)}, indent=2))
    return {"source": m.source, "revision": m.revision}
