"""Running one stage: check its inputs, build atomically, write the manifest last.

What every stage process runs (`python -m modelmake stage NAME OVERRIDES`, from Snakemake's
rules and dvc.yaml alike): it finds its node in the plan, takes the artifact's lock, and builds
unless the artifact exists. This module is machinery (no artifact's code key covers it); what it
writes into every artifact (the manifest, metrics.json) is versioned by RUNNER_FORMAT instead.
"""

from __future__ import annotations

import datetime as dt
import errno
import importlib
import json
import logging
import os
import platform
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from modelmake.core.atomic import atomic_dir, write_json
from modelmake.core.errors import ModelmakeError
from modelmake.core.lifecycle import die_with_parent
from modelmake.core.locks import exclusive
from modelmake.core.manifest import MANIFEST, file_hashes, verify
from modelmake.core.owners import boot_id, node_name
from modelmake.graph.nodes import Node

# Bump by hand when what the runner writes into an artifact changes (manifest fields, metrics
# file): every key moves, so old artifacts are rebuilt rather than read in the old form.
RUNNER_FORMAT = 1
METRICS = "metrics.json"
JOURNAL = Path("logs") / "builds.jsonl"  # one line per artifact built: who built what, when

log = logging.getLogger("modelmake")
Build = Callable[[Node, Path, DictConfig], dict]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def stage_build(module: str) -> Build:
    """A stage module's `build(node, out, cfg)`, imported when its stage runs."""
    return importlib.import_module(module).build


def run_node(node: Node, cfg, build: Build) -> Node:
    """Build `node` (checking its inputs, atomically, manifest last) unless it exists."""
    stage = node.stage
    expected = os.environ.get("MODELMAKE_EXPECT")  # set by the Snakefile: both sides must agree
    if expected and Path(expected) != node.path:
        raise ModelmakeError(
            f"{stage}: the build graph expects {expected} but this config keys to {node.path}; "
            "the plan is not deterministic (a config or code file changed mid-run?)"
        )
    # One builder per artifact: a second build (another sweep, a search) that needs it waits here,
    # then finds it built. The lock sits beside the folder, so it never enters the artifact.
    with exclusive(node.path.parent / f".{node.path.name}.lock"):
        if node.manifest.exists() and not os.environ.get("MODELMAKE_FORCE"):
            log.info("%s: up to date at %s", stage, node.path)
            return node
        _check_inputs(node)
        _build(node, cfg, build)
    return node


def _check_inputs(node: Node) -> None:
    """Every input built, unchanged since its manifest was written, and the artifact its place
    names (a tampered or truncated file, or a folder swapped for another artifact, is named, not
    trained on). Hashing the inputs is cheap next to any stage."""
    for name, inp in node.inputs.items():
        if not inp.manifest.exists():
            raise ModelmakeError(
                f"{node.stage}: input '{name}' is not built ({inp.manifest} missing). Build the chain with "
                f"`modelmake build`, or run `python -m modelmake stage {inp.stage}` with the same overrides."
            )
        try:
            verify(inp.path, inp.stage, inp.key)
        except ModelmakeError as e:
            flat = str(e).replace(":\n  ", ": ", 1).replace("\n  ", "; ")  # one line: the folder and its files
            raise ModelmakeError(f"{node.stage}: refusing input '{name}': {flat}") from None


def _build(node: Node, cfg, build: Build) -> None:
    stage = node.stage
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
    # where it ran: on a cluster, the SLURM node and job (the manifest's "host" is in no key)
    _journal({"stage": stage, "key": node.key, "started": started, "pid": os.getpid(),
              "host": manifest["host"], "node": node_name(), "boot_id": boot_id(),
              "slurm_job_id": os.environ.get("SLURM_JOB_ID")})


def _journal(entry: dict) -> None:
    """Append to the build journal (O_APPEND: concurrent builds' lines never interleave), so how
    often an artifact was built can be counted after the fact; its manifest keeps only the last."""
    JOURNAL.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        os.write(fd, (json.dumps(entry, sort_keys=True) + "\n").encode())
    finally:
        os.close(fd)


def peak_rss_bytes() -> int:
    """Peak resident memory of this stage: its own process or the largest child it ran (the
    onnxruntime-genai builder runs as one)."""
    import resource

    kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
              resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return kib * 1024  # Linux reports KiB


def run_stage(module: str, node: Node, cfg) -> None:
    """What a stage process runs: one clear line and exit 2 on a refusal."""
    guarded(lambda: run_node(node, cfg, stage_build(module)))


def guarded(fn) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    die_with_parent()
    try:
        fn()
    except ModelmakeError as e:
        print(f"modelmake: error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno not in WRITE_ERRORS:
            raise
        # a full disk, a file size limit, a read-only folder: the cause in one line (the temporary
        # folder is already gone, nothing was counted as built)
        print(f"modelmake: error: cannot write {e.filename or ''}: {e.strerror} (errno {errno.errorcode[e.errno]})",
              file=sys.stderr)
        sys.exit(2)


WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
