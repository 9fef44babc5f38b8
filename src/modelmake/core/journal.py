"""The build journal, `logs/builds.jsonl`: one line per artifact a stage built or pulled, with what
the artifact itself leaves out because it differs between builds of one key: when, where, how long,
how much memory, and what the stage measured of the machine (decode speed, GEMM speed). Appended
with O_APPEND, so concurrent builds' lines never interleave."""

from __future__ import annotations

import json
import os
from pathlib import Path

JOURNAL = Path("logs") / "builds.jsonl"  # relative to the project root (every stage runs there)


def append(entry: dict, root: Path | None = None) -> None:
    path = (root or Path()) / JOURNAL
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        os.write(fd, (json.dumps(entry, sort_keys=True) + "\n").encode())
    finally:
        os.close(fd)


def entries(root: Path | None = None) -> list[dict]:
    """Every line of the journal (a line a crash cut short is skipped)."""
    path = (root or Path()) / JOURNAL
    out = []
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def latest(stage: str, key: str, root: Path | None = None, action: str | None = "build") -> dict | None:
    """The journal's last entry for one artifact (its last build, by default)."""
    found = None
    for e in entries(root):
        if e.get("stage") == stage and e.get("key") == key and (action is None or e.get("action", "build") == action):
            found = e
    return found
