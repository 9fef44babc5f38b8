"""Cluster benchmark: the default build through SLURM vs locally, and what a sweep sends.

    python bench/cluster.py [--ranks 4,8,16]      (root: it starts tests/cluster's one-node SLURM)

In fresh copies of the project (nothing cached), on this machine:
- local: `snakemake --cores 2` (profiles/default), wall time TL;
- SLURM: `modelmake build --profile slurm` (profiles/slurm), one sbatch per stage, wall time TS;
- the scheduler's overhead per job: (TS - TL) / jobs, next to each build's own overhead over
  the stages' compute (their manifests' `seconds`). Target (issue 9): under 5 s a job on one node;
- the jobs a 3-point LoRA sweep sends to SLURM (Snakemake's dry run through the profile), from
  nothing and after the default build.
A cluster already running (sinfo answers) is used as it is; one started here is stopped after.
Prints the table and writes it to its section of bench/RESULTS.md (`bench:cluster`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from common import REPO, md_table, parser, stage_compute, timed, timed_snakemake, write_section
from helpers.project import copy_project  # the tests' fresh-copy helpers (common put tests/ on sys.path)
from modelmake.graph.snakemake import config_args, parse_jobs

SUBMITTED = re.compile(r"has been submitted with SLURM jobid \d+")
LOG = re.compile(r"has been submitted with SLURM jobid \d+ \(log: (\S+)\)\.")
SWEEP_RULES = ("base", "dataset", "quantize", "export", "finetune", "adapter", "generate", "evaluate")


def in_jobs(out: str) -> float:
    """Seconds during which at least one SLURM job was running (its Snakemake started -> its last
    line), from the job logs the build names: the rest of the SLURM wall time is submission,
    queueing and the plugin's status polling between jobs."""
    spans = []
    for log in LOG.findall(out):
        text = Path(log).read_text()
        start = datetime.strptime(re.search(r"Date: (\S+ \S+)", text).group(1), "%Y-%m-%d %H:%M:%S")
        end = datetime.strptime(re.findall(r"^\[(\w+ \w+ +\d+ [\d:]+ \d+)\]", text, re.M)[-1], "%a %b %d %H:%M:%S %Y")
        spans.append((start, end))
    total, reach = 0.0, None
    for a, b in sorted(spans):  # the union of the intervals
        if reach is None or a > reach:
            total += (b - a).total_seconds()
            reach = b
        elif b > reach:
            total += (b - reach).total_seconds()
            reach = b
    return total


def sweep_jobs(project: Path, ranks: str) -> dict[str, int]:
    _, out = timed_snakemake(project, "-n", "--workflow-profile", "profiles/slurm", *config_args([f"lora.r={ranks}"]),
                             what="sweep dry run")
    return parse_jobs(out)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--ranks", default="4,8,16")
    args = ap.parse_args()
    up = None
    if subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        up = Path(tempfile.mkdtemp(prefix="modelmake-slurm-"))
        r = subprocess.run(["bash", str(REPO / "tests/cluster/slurm-up.sh"), str(up)], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"cannot start the test cluster:\n{r.stderr[-2000:]}")
    work = Path(tempfile.mkdtemp(prefix="modelmake-bench-"))
    try:
        local = copy_project(work / "local")
        tl, _ = timed(local, sys.executable, "-m", "snakemake", "--cores", "2", timeout=3600)
        cl, nl = stage_compute(local)
        slurm = copy_project(work / "slurm")
        cold = sweep_jobs(slurm, args.ranks)
        ts, out = timed(slurm, "modelmake", "build", "--profile", "slurm", timeout=3600)
        cs, ns = stage_compute(slurm)
        jobs = len(SUBMITTED.findall(out))
        running = in_jobs(out)
        warm = sweep_jobs(slurm, args.ranks)
    finally:
        if up is not None:
            subprocess.run(["bash", str(REPO / "tests/cluster/slurm-down.sh"), str(up)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    per_job = (ts - tl) / jobs
    rows = [
        ["default build, local (`snakemake --cores 2`)", f"{tl:.1f} s", f"{nl} stages, their own compute {cl:.1f} s"],
        ["default build, SLURM (`modelmake build --profile slurm`)", f"{ts:.1f} s",
         f"{jobs} sbatch jobs, their own compute {cs:.1f} s; {ts / tl:.2f}x local"],
        ["scheduler overhead per job: (SLURM - local) / jobs", f"{per_job:.1f} s",
         f"target < 5 s; build overhead over compute: local {(tl - cl) / nl:.1f} s, "
         f"SLURM {(ts - cs) / ns:.1f} s a job"],
        ["SLURM wall time with no job running (submission, queue, status polling)", f"{ts - running:.1f} s",
         f"{(ts - running) / jobs:.1f} s a job; jobs running {running:.1f} s (their logs: Snakemake start to end)"],
    ]
    for label, jobs_ in ((f"sweep lora.r={args.ranks} from nothing", cold),
                         (f"sweep lora.r={args.ranks} after the default build", warm)):
        rows.append([label, ", ".join(f"{r} {jobs_.get(r, 0)}" for r in SWEEP_RULES),
                     "SLURM jobs (dry run through profiles/slurm)"])
    title = "SLURM (one node, this machine) vs local"
    table = md_table(["measure", "value", "against"], rows)
    print("\n".join([f"## {title}", "", table, ""]))
    write_section("cluster", title, "\n\n".join([
        "Fresh copies of the project (nothing cached) on this machine: the default build through SLURM (`modelmake "
        "build --profile slurm`, one sbatch per stage) against the same build locally (`snakemake --cores 2`), "
        "measured in the same run; the scheduler's overhead per job is (SLURM - local) / jobs, beside each build's "
        "own overhead over the stages' compute (their manifests' `seconds`); target (issue 9): under 5 s a job on "
        "one node. The sweep rows: the jobs Snakemake's dry run through profiles/slurm would send.",
        table,
    ]))


if __name__ == "__main__":
    main()
