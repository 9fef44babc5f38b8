"""Talking to Snakemake: its executable, Hydra overrides as `--config`, its dry-run job table."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

from modelmake.plan import OVERRIDES_KEY, ROOT


def snakemake_exe() -> str:
    """The snakemake of the running environment (the scripts then run in that environment too)."""
    local = Path(sys.executable).parent / "snakemake"
    return str(local) if local.exists() else (shutil.which("snakemake") or "snakemake")


def config_args(overrides) -> list[str]:
    """Hydra overrides as Snakemake `--config` (Snakemake refuses dotted keys; see plan.py)."""
    overrides = list(overrides)
    return ["--config", f"{OVERRIDES_KEY}={json.dumps(overrides)}"] if overrides else []


def snakemake_command(overrides, extra=()) -> list[str]:
    """Snakemake on this project for these Hydra overrides; `extra`: its own arguments and targets."""
    extra = list(extra)
    cmd = [snakemake_exe(), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(ROOT)]
    # a workflow profile (modelmake build --profile) sets its own cores: for cluster jobs too,
    # Snakemake caps each rule's threads at --cores, and "all" would mean the submit host's
    if "--cores" not in extra and "-c" not in extra and "--workflow-profile" not in extra:
        cmd += ["--cores", "all"]
    return cmd + config_args(overrides) + extra


def parse_jobs(output: str) -> dict[str, int]:
    """Jobs per rule from Snakemake's output (`Job stats:` table); {} when nothing is to be done."""
    if "Nothing to be done" in output or "Job stats:" not in output:
        return {}
    table = output.split("Job stats:", 1)[1]
    jobs = {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)}
    return {k: v for k, v in jobs.items() if k not in ("total", "all")}
