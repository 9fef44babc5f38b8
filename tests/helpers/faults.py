"""Fault injection on a project copy: kill -9 a stage process or its Snakemake at a seeded random
point inside a stage, and count what a fault left (temporary folders, lock files, scratch folders,
artifacts built twice). Used by tests/test_faults.py and bench/faults.py.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from modelmake.core.journal import entries, latest
from modelmake.core.locks import SCRATCH_PREFIX, TMP_MARK


def env_for(project: Path, extra: dict | None = None) -> dict:
    """The environment a command in `project` runs with: that copy's modelmake, this venv's tools."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return os.environ | {"PYTHONPATH": str(project / "src"), "PATH": path} | (extra or {})


def start(project: Path, args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen(args, cwd=project, env=env_for(project, env), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


def temporaries(project: Path, stage: str) -> set[Path]:
    """A stage's temporary folders (not their owner records beside them: `leftovers` counts those)."""
    return {p for p in (project / "artifacts" / stage).glob(f".*{TMP_MARK}*") if p.is_dir()}


def leftovers(project: Path) -> list[Path]:
    """What no finished build should leave under artifacts/: temporary folders, lock files, folders
    without a manifest."""
    out = []
    for stage in (project / "artifacts").iterdir():
        for p in stage.iterdir():
            if p.name.startswith(".") or not (p / "manifest.json").exists():
                out.append(p)
    return out


def size(paths) -> int:
    total = 0
    for p in paths:
        p = Path(p)
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
        total += sum(f.stat().st_size for f in files)
    return total


def scratch_folders() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"))


def _runs_stage(cmd: list[bytes], stage: str) -> bool:
    want = [b"-m", b"modelmake", b"stage", stage.encode()]
    return any(cmd[i:i + 4] == want for i in range(len(cmd)))


def stage_pids(project: Path, stage: str) -> list[int]:
    """Processes running `python -m modelmake stage <stage>` in `project`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if _runs_stage(cmd, stage) and Path(cwd) == Path(project):
            pids.append(int(proc.name))
    return pids


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return True


def wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None, poll: float = 0.05):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the build ended (rc {proc.returncode}) before {what}")
        time.sleep(poll)
    raise RuntimeError(f"timed out waiting for {what}")


def kill_inside(project: Path, stage: str, victim: str, args: list[str], rng: random.Random, seconds: float,
                log: Path, attempts: int = 4) -> dict:
    """Start `args` (a build) in `project`, wait until `stage` is writing its temporary folder, wait
    a random part of `seconds` (the stage's usual time), then kill -9 the `victim`: "stage" (its
    process) or "snakemake" (the build's own process, args[0]). A stage that finished before the
    kill (a faster run than the one timed) is a miss: its artifact is removed and the build runs
    again with half the wait, so the fault is always injected inside the stage. Returns what was seen."""
    from modelmake.core.locks import make_writable

    folder = Path(project) / "artifacts" / stage
    fraction = 0.5
    for _ in range(attempts):
        old, finals = temporaries(project, stage), set(folder.glob("[0-9a-f]*"))
        build = start(project, args, log)
        pid = wait_for(lambda: stage_pids(project, stage), 600, f"{stage} to start", build)[0]
        # then a tight poll (a few ms) for its temporary folder: a stage's build can take 0.1 s
        wait_for(lambda old=old: temporaries(project, stage) - old, 600, f"{stage} to write", build, poll=0.002)
        time.sleep(rng.uniform(0.0, fraction) * seconds)
        try:
            if gone(pid):
                raise ProcessLookupError(pid)
            os.kill(pid if victim == "stage" else build.pid, signal.SIGKILL)
        except ProcessLookupError:  # the stage was done before the kill: not the fault asked for
            with contextlib.suppress(ProcessLookupError):
                os.killpg(build.pid, signal.SIGKILL)
            build.wait(120)
            for new in set(folder.glob("[0-9a-f]*")) - finals:
                make_writable(new)
                shutil.rmtree(new)
            fraction /= 2
            continue
        rc = build.wait(120)
        if victim == "snakemake":  # the stage must not run on, orphaned
            wait_for(lambda pid=pid: gone(pid), 30, f"the orphaned {stage} process to exit")
        return {"rc": rc, "stage_pid": pid, "temporaries": sorted(temporaries(project, stage) - old)}
    raise RuntimeError(f"{stage} finished before every one of {attempts} kills")


def journal(project: Path) -> list[dict]:
    """The build journal (graph.journal): one line per artifact built."""
    return [e for e in entries(Path(project)) if e.get("action", "build") == "build"]


def built_seconds(project: Path, node) -> float:
    """How long `node`'s artifact took to build in `project` (its journal entry)."""
    return latest(node.stage, node.key, Path(project))["seconds"]


def built_twice(project: Path) -> int:
    seen: dict[tuple, int] = {}
    for j in journal(project):
        seen[(j["stage"], j["key"])] = seen.get((j["stage"], j["key"]), 0) + 1
    return sum(n - 1 for n in seen.values())

