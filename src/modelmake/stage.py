"""Running one stage: find its node in the plan, check its inputs, build atomically, write the
manifest last. Shared by every entry point in scripts/."""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from modelmake.atomic import atomic_dir, write_json
from modelmake.provenance import MANIFEST, file_hashes
from modelmake.errors import ModelmakeError
from modelmake.plan import Node, plan_for_cfg

log = logging.getLogger("modelmake")
METRICS = "metrics.json"

Build = Callable[[Node, Path, DictConfig], dict]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def run_stage(stage: str, cfg: DictConfig, build: Build) -> Node:
    """Build `stage` for `cfg` unless its artifact exists; return its node."""
    return run_node(plan_for_cfg(cfg)[stage], cfg, build)


def run_node(node: Node, cfg, build: Build) -> Node:
    """Build `node` (checking its inputs, atomically, manifest last) unless it exists."""
    stage = node.stage
    expected = os.environ.get("MODELMAKE_EXPECT")  # set by the Snakefile: both sides must agree
    if expected and Path(expected) != node.path:
        raise ModelmakeError(
            f"{stage}: the build graph expects {expected} but this config keys to {node.path}; "
            "the plan is not deterministic (a config or code file changed mid-run?)"
        )
    if node.manifest.exists() and not os.environ.get("MODELMAKE_FORCE"):
        log.info("%s: up to date at %s", stage, node.path)
        return node
    for name, inp in node.inputs.items():
        if not inp.manifest.exists():
            raise ModelmakeError(
                f"{stage}: input '{name}' is not built ({inp.manifest} missing). Build the chain with "
                f"`snakemake --cores all {inp.manifest}`, or run scripts/{inp.stage}.py with the same overrides."
            )
    log.info("%s: building %s", stage, node.path)
    started, t0 = _now(), time.perf_counter()
    with atomic_dir(node.path) as tmp:
        metrics = build(node, tmp, cfg) or {}
        write_json(tmp / METRICS, metrics)
        manifest = node.provenance() | {
            "files": file_hashes(tmp),
            "started": started,
            "finished": _now(),
            "seconds": round(time.perf_counter() - t0, 3),
            "peak_rss_bytes": peak_rss_bytes(),
            "host": socket.gethostname(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "metrics": metrics,
        }
        write_json(tmp / MANIFEST, manifest)
    log.info("%s: done in %.1f s -> %s", stage, time.perf_counter() - t0, node.path)
    return node


def peak_rss_bytes() -> int:
    """Peak resident memory of this stage: its own process or the largest child it ran (the
    onnxruntime-genai builder runs as one)."""
    import resource

    kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return kib * 1024  # Linux reports KiB


def entry(stage: str, build: Build, cfg: DictConfig) -> None:
    """What a @hydra.main entry point calls: one clear line and exit 2 on a refusal."""
    guarded(lambda: run_stage(stage, cfg, build))


def guarded(fn) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        fn()
    except ModelmakeError as e:
        print(f"modelmake: error: {e}", file=sys.stderr)
        sys.exit(2)
