"""Running one stage: check its inputs, build atomically, write the manifest last.

What every stage process runs (`python -m modelmake stage NAME OVERRIDES`, from Snakemake's
rules and dvc.yaml alike): it finds its node in the plan, takes the artifact's lock, and builds
unless the artifact exists. This module is machinery (no artifact's code key covers it); what it
writes into every artifact (the manifest, metrics.json) is versioned by RUNNER_FORMAT instead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import importlib
import logging
import os
import platform
import re
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from modelmake.core import journal
from modelmake.core.atomic import atomic_dir, write_json
from modelmake.core.errors import ModelmakeError
from modelmake.core.lifecycle import die_with_parent
from modelmake.core.locks import exclusive
from modelmake.core.manifest import MANIFEST, file_hashes, verify
from modelmake.core.owners import boot_id, node_name
from modelmake.graph.cache import setting as cache_setting
from modelmake.graph.nodes import Node

# Bump by hand when what the runner writes into an artifact changes (manifest fields, metrics
# file): every key moves, so old artifacts are rebuilt rather than read in the old form.
RUNNER_FORMAT = 2
METRICS = "metrics.json"

log = logging.getLogger("modelmake")
Build = Callable[[Node, Path, DictConfig], dict]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def stage_build(module: str) -> Build:
    """A stage module's `build(node, out, cfg)`, imported only when it builds: a stage found up to
    date or pulled from the cache never imports torch, transformers or AutoAWQ (~4-7 s a process)."""
    def build(node: Node, out: Path, cfg):
        return importlib.import_module(module).build(node, out, cfg)
    return build


def run_node(node: Node, cfg, build: Build, shared: bool = False, stages=None, _outer: bool = True) -> Node:
    """Build `node` (checking its inputs, atomically, manifest last) unless it exists. A `shared`
    artifact (one a rebuild reproduces: recipe.table) is first asked of the shared cache, verified
    and pulled if it is there, and published to it after a build here. Where the cache held it but
    its entry is refused (or the cache failed mid-way), its inputs may never have been asked for (a
    cached artifact counts as present in the build graph): they are then built here first, each as
    its own stage would (`stages`: stage name -> (build, shared))."""
    stage = node.stage
    expected = os.environ.get("MODELMAKE_EXPECT") if _outer else None  # set by the Snakefile: both must agree
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
        cache = cache_setting(cfg) if shared else None
        if cache is not None and cache.pull and not os.environ.get("MODELMAKE_FORCE"):
            got = _pulled(node, cache)
            if got:
                return node
            if got is None and stages is not None:  # refused: what the build graph did not ask for, here
                for inp in node.inputs.values():
                    if not inp.manifest.exists():
                        log.info("%s: building its input %s %s here (the cache's entry was refused)",
                                 stage, inp.stage, inp.key)
                        run_node(inp, cfg, *stages(inp.stage), stages=stages, _outer=False)
        _check_inputs(node)
        _build(node, cfg, build)
        if cache is not None and cache.push:
            _publish(node, cache)
    return node


def _cache_trouble(cache, what: str, why: str) -> None:
    """One line for a cache that could not answer; a stop only where the cache is required."""
    line = f"cache {cache.url}: {what}: {why}"
    if cache.required:
        raise ModelmakeError(f"{line} (cache.required=true)")
    print(f"modelmake: warning: {line}; building here", file=sys.stderr, flush=True)


def _pulled(node: Node, cache) -> bool | None:
    """Pull `node` from the cache into place, verified: True; False where the cache has no entry;
    None where its entry was refused or the cache failed (the build graph may have counted on it)."""
    from modelmake.graph.cache import CacheError, Refused, pull, store

    st, started = store(cache.url), _now()
    try:
        with atomic_dir(node.path) as tmp:  # anything but a verified entry: the folder goes
            figures = pull(node, st, tmp)
            if figures is None:
                raise LookupError
    except LookupError:
        return False
    except Refused as e:
        print(f"modelmake: warning: cache {cache.url}: refusing {node.stage} {node.key}: {e}; building it here",
              file=sys.stderr, flush=True)
        return None
    except CacheError as e:
        _cache_trouble(cache, f"pulling {node.stage} {node.key}", str(e))
        return None
    log.info("%s: pulled %s from %s (%.1f MB in %.1f s), verified", node.stage, node.key, cache.url,
             figures["bytes"] / 1e6, figures["seconds"])
    journal.append({"action": "pull", "stage": node.stage, "key": node.key, "started": started,
                    "pid": os.getpid(), "host": socket.gethostname(), "cache": cache.url, **figures})
    return True


def _publish(node: Node, cache, strict: bool = False) -> None:
    """Publish a finished artifact; a failure is one line, and the build here still counts."""
    from modelmake.core.manifest import read_manifest
    from modelmake.graph.cache import CacheError, publish, store

    try:
        figures = publish(node, store(cache.url), node.path, read_manifest(node.path))
    except CacheError as e:
        if strict:
            raise
        _cache_trouble(cache, f"publishing {node.stage} {node.key}", str(e))
        return
    log.info("%s: %s %s in %s (%d file(s) uploaded)", node.stage,
             "published" if figures["published"] else "already published by another build:", node.key, cache.url,
             figures["files_uploaded"])
    journal.append({"action": "publish", "stage": node.stage, "key": node.key, "started": _now(),
                    "host": socket.gethostname(), "cache": cache.url, **figures})


def pull_node(node: Node, cache) -> bool:
    """`modelmake cache pull`: one artifact from the cache, under its lock; True if it is here now."""
    with exclusive(node.path.parent / f".{node.path.name}.lock"):
        return node.manifest.exists() or bool(_pulled(node, cache))


def publish_node(node: Node, cache, strict: bool = False) -> None:
    """`modelmake cache push`: one built artifact, checked against its manifest first; `strict`:
    a cache that cannot answer raises CacheError instead of one line."""
    verify(node.path, node.stage, node.key)
    _publish(node, cache, strict)


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
    """The artifact holds only what its key determines, so a rebuild (another day, another machine
    of the same kind, a fresh clone) writes the same bytes and DVC's lock stays as committed: how
    long it took, where, and what a stage measured of the machine (`metrics["measured"]`: decode
    speed, GEMM speed) go to the build journal instead."""
    stage = node.stage
    log.info("%s: building %s", stage, node.path)
    started, t0 = _now(), time.perf_counter()
    with atomic_dir(node.path) as tmp:
        metrics = dict(build(node, tmp, cfg) or {})
        measured = metrics.pop("measured", {})
        write_json(tmp / METRICS, metrics)
        write_json(tmp / MANIFEST, node.provenance() | {"files": file_hashes(tmp), "metrics": metrics})
    seconds = time.perf_counter() - t0
    log.info("%s: done in %.1f s -> %s", stage, seconds, node.path)
    # where it ran (on a cluster: the SLURM node and job), how long, what it measured: the journal's
    journal.append({"action": "build", "stage": stage, "key": node.key, "started": started,
                    "seconds": round(seconds, 3), "pid": os.getpid(), "host": socket.gethostname(),
                    "node": node_name(), "boot_id": boot_id(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                    "peak_rss_bytes": peak_rss_bytes(), "platform": platform.platform(),
                    "python": sys.version.split()[0], "model": str(cfg.model.name) if cfg is not None else None,
                    "measured": measured})


def peak_rss_bytes() -> int:
    """Peak resident memory of this stage: its own process or the largest child it ran (the
    onnxruntime-genai builder runs as one)."""
    import resource

    kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
              resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return kib * 1024  # Linux reports KiB


def run_stage(module: str, node: Node, cfg) -> None:
    """What a stage process runs: one clear line and exit 2 on a refusal."""
    guarded(lambda: run_node(node, cfg, stage_build(module)), node.stage)


_ALLOC = re.compile(r"can't allocate memory: you tried to allocate (\d+) bytes")


def memory_total() -> int | None:
    """This machine's memory in bytes (or the cgroup limit this process runs under, if lower)."""
    total = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            total = min(total or int(limit), int(limit))
    return total


def guarded(fn, stage: str | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    die_with_parent()
    try:
        fn()
    except ModelmakeError as e:
        print(f"modelmake: error: {e}", file=sys.stderr)
        sys.exit(2)
    except (MemoryError, RuntimeError) as e:
        m = _ALLOC.search(str(e))
        if not isinstance(e, MemoryError) and not m:
            raise
        tried = f"it tried to allocate {int(m.group(1)) / 1e9:.1f} GB; " if m else ""
        total = memory_total()
        has = f"this machine (or its limit) has {total / 1e9:.1f} GB" if total else "memory ran out"
        print(f"modelmake: error: {stage or 'the stage'}: out of memory: {tried}{has} "
              "(resources: conf/resources/, or a machine with more memory)", file=sys.stderr)
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
