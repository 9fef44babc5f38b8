"""A project copy to build in, and the commands tests run in it (the copy's own modelmake counts)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from modelmake.graph.snakemake import config_args, parse_jobs, snakemake_exe

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("MODELMAKE_SHARED_DATA", REPO.parent / "shared" / "data"))
# .cache holds Azurite's npm install (~360 MB, what `make install` puts there): copying it cost each
# project copy ~5 s; the emulator runs from this checkout's own .cache (helpers.azurite)
IGNORE = shutil.ignore_patterns(".git", ".venv", ".cache", ".ruff_cache", "artifacts", "logs", ".snakemake",
                                "__pycache__", "registry", "*.egg-info", ".pytest_cache", "bench", "outputs",
                                ".dvc", "searches")


def copy_project(dst: Path, built: Path | None = None, with_dvc: bool = False) -> Path:
    """A copy of the project's sources; with `built`, that copy's artifacts come along, and its
    registry (the register artifacts' receipts name versions in it: without it, registering refuses
    a registry that lost its history); `with_dvc`: the DVC repository's config (.dvc/, not its cache)."""
    shutil.copytree(REPO, dst, ignore=IGNORE)
    if with_dvc:
        shutil.copytree(REPO / ".dvc", dst / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp", "*.lock"))
    if built is not None:
        shutil.copytree(built / "artifacts", dst / "artifacts")
        if (built / "registry").is_dir():
            shutil.copytree(built / "registry", dst / "registry", ignore=shutil.ignore_patterns("*.lock"))
    return dst


def run(project: Path, *args: str, timeout: int = 1800, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command in `project`, importing that copy's modelmake (its edits count)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # `python` = this venv's
    env = os.environ | {"PYTHONPATH": str(project / "src"), "PATH": path} | (env or {})
    return subprocess.run(list(args), cwd=project, env=env, capture_output=True, text=True, timeout=timeout)


def git(cwd: Path, *args: str) -> str:
    r = run(cwd, "git", "-c", "user.name=t", "-c", "user.email=t@t", *args)
    assert r.returncode == 0, f"git {' '.join(args)}:\n{r.stderr[-2000:]}"
    return r.stdout


def snakemake(project: Path, *args: str) -> subprocess.CompletedProcess:
    return run(project, snakemake_exe(), *args)


def build(project: Path, *config: str, env: dict | None = None,
          until: str | None = None) -> subprocess.CompletedProcess:
    """Build the config's chain; with `until` (a stage), only that stage and what it needs: a test
    pays for the stages it reads, not for evaluate, register and report too."""
    from modelmake.recipe import build_plan

    # targets go before --config (Snakemake would read them as config entries)
    targets = build_plan(overrides=list(config)).targets(until) if until else []
    args = ["--cores", "2", *targets, *config_args(config)]
    r = run(project, snakemake_exe(), *args, env=env)
    assert r.returncode == 0, f"snakemake {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


def planned_jobs(project: Path, *config: str) -> dict[str, int]:
    """Snakemake's own dry run: the number of jobs per rule it would run (empty: nothing to do)."""
    args = ["-n"] + config_args(config)
    r = snakemake(project, *args)
    assert r.returncode == 0, f"snakemake {' '.join(args)} failed:\n{r.stderr[-3000:]}"
    return parse_jobs(r.stdout + r.stderr)


def nodes(project: Path, *overrides: str) -> dict:
    """The plan's nodes for one configuration, with paths inside `project`."""
    from modelmake.recipe import build_plan

    point = build_plan(overrides=list(overrides)).finals[0]
    for n in point.values():
        n.path = project / n.path
    return point


# Fake credentials in the cold build's environment: test_faults checks that no file the build
# wrote holds them.
SECRETS = {"AZURE_CLIENT_SECRET": "fake-secret-9f8e7d6c5b4a", "HF_TOKEN": "hf_fakeTokenAbCdEf0123456789",
           "AZURE_CLIENT_ID": "00000000-fake-client-id-1234"}


def ending(stderr: str) -> list[str]:
    """The last lines of a failed `modelmake build`: from its first `modelmake: <stage> failed:` line
    on, the pointer to Snakemake's whole output (which always ends them) checked and dropped."""
    lines = stderr.strip().splitlines()
    assert lines and lines[-1].strip().startswith("Snakemake's whole output: logs/build/"), lines[-5:]
    start = next((i for i, line in enumerate(lines) if " failed: " in line and line.startswith("modelmake: ")),
                 len(lines) - 1)
    return lines[start:-1]
