"""What a build is doing and how long it has left: each running stage's own progress (the tqdm bar
in its log: layers, steps, loss), and estimates of how long a stage takes, learned from the build
journal of this machine (seconds of earlier builds of that stage, with the config in their
manifests). Used by `modelmake build` (the terminal view), `modelmake plan` and `modelmake status`.
"""

from __future__ import annotations

import json
import re
import socket
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from modelmake.core import journal
from modelmake.core.locks import TMP_MARK

# tqdm's bar: "desc:  34%|███▍      | 34/100 [00:05<00:09,  6.60it/s, loss=0.762]"
_BAR = re.compile(r"(?P<desc>[^\r\n|]*?):?\s*(?P<pct>\d+)%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*"
                  r"\[(?P<elapsed>[\d:]+)<(?P<left>[\d:?]+)(?P<rest>[^\]]*)\]")


@dataclass
class Progress:
    desc: str
    n: int
    total: int
    left_s: float | None     # tqdm's own estimate of the time left
    postfix: str             # e.g. "loss=0.762"

    @property
    def fraction(self) -> float:
        return self.n / self.total if self.total else 0.0

    def __str__(self) -> str:
        text = f"{self.desc.strip() or 'progress'} {self.n}/{self.total}"
        return f"{text} {self.postfix}" if self.postfix else text


def _clock(text: str) -> float | None:
    if "?" in text:
        return None
    parts = [int(p) for p in text.split(":")]
    seconds = 0
    for p in parts:
        seconds = seconds * 60 + p
    return float(seconds)


def last_progress(log: Path, tail_bytes: int = 4096) -> Progress | None:
    """The last progress bar a stage wrote to its log (tqdm writes its updates with carriage returns)."""
    try:
        with open(log, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - tail_bytes))
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    found = None
    for m in _BAR.finditer(text):
        found = m
    if found is None:
        return None
    rest = found.group("rest").split(",")
    postfix = ", ".join(p.strip() for p in rest[2:] if "=" in p)  # after the rate
    return Progress(found.group("desc").strip(), int(found.group("n")), int(found.group("total")),
                    _clock(found.group("left")), postfix)


def human(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


# what a stage's time grows with, where it is in its config (finetune: optimizer steps x batch)
WORK = {"finetune": ("train.steps", "train.batch_size"), "quantize": ("quantize.calib_samples",),
        "evaluate": ("evaluate.max_records",)}


def _work(stage: str, config: dict) -> float:
    total = 1.0
    for dotted in WORK.get(stage, ()):
        value = config
        for part in dotted.split("."):
            value = value.get(part, {}) if isinstance(value, dict) else {}
        total *= float(value) if isinstance(value, (int, float)) and value else 1.0
    return total


class Estimator:
    """How long building a node will take on this machine: the median of earlier builds of the same
    stage with the same config (read from their manifests), else of the same stage and model scaled
    by its work (WORK), else unknown."""

    def __init__(self, root: Path):
        self.root = Path(root)
        host = socket.gethostname()
        self.builds = [e for e in journal.entries(self.root)
                       if e.get("action", "build") == "build" and e.get("host") == host and e.get("seconds")]
        self._configs: dict[tuple[str, str], dict | None] = {}

    def _config(self, stage: str, key: str) -> dict | None:
        if (stage, key) not in self._configs:
            try:
                m = json.loads((self.root / "artifacts" / stage / key / "manifest.json").read_text())
                self._configs[(stage, key)] = m.get("config")
            except (OSError, ValueError):
                self._configs[(stage, key)] = None
        return self._configs[(stage, key)]

    def seconds(self, node, model: str | None) -> float | None:
        same_stage = [e for e in self.builds if e["stage"] == node.stage]
        exact = [e["seconds"] for e in same_stage if self._config(e["stage"], e["key"]) == node.config
                 and e.get("model") == model]
        if exact:
            return statistics.median(exact)
        scaled = []
        for e in same_stage:
            config = self._config(e["stage"], e["key"])
            if e.get("model") == model and config is not None:
                scaled.append(e["seconds"] * _work(node.stage, node.config) / _work(node.stage, config))
        return statistics.median(scaled) if scaled else None


def running(root: Path) -> list[dict]:
    """Stages being built now in this project (by any build on this host): their temporary folders
    held by a live writer, with the stage's progress and elapsed time."""
    from modelmake.core.locks import is_held

    out = []
    artifacts = Path(root) / "artifacts"
    for tmp in sorted(artifacts.glob(f"*/.*{TMP_MARK}*")) if artifacts.is_dir() else []:
        if not tmp.is_dir() or not is_held(tmp):
            continue
        stage, key = tmp.parent.name, tmp.name[1:].split(TMP_MARK, 1)[0]
        elapsed = time.time() - tmp.stat().st_ctime
        out.append({"stage": stage, "key": key, "elapsed_s": elapsed,
                    "progress": last_progress(Path(root) / "logs" / stage / f"{key}.log")})
    return out
