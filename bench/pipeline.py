"""Build-graph benchmark: cold end-to-end time, no-op time, and what a LoRA-only change rebuilds.

Runs in a fresh copy of the project (nothing cached), on however many cores it is given:
    python bench/pipeline.py [--cores 2] [--repeats 5]
Prints a table, with ratios against baselines measured in the same run:
- cold: wall time of `snakemake --cores N` vs the sum of the stages' own build times
  (from their manifests): the ratio is the build graph's overhead (process start, imports).
- no-op: `snakemake -n` on the built tree vs `snakemake --version` (the bare start-up floor).
- LoRA-only change (lora.r=16): jobs per rule from Snakemake's dry run, then the real rebuild
  time vs the cold time.
Targets on 2 cores (issue 2): cold <= 300 s, no-op <= 3 s. Results also go to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from helpers.project import (  # noqa: E402  (the tests' fresh-copy helpers)
    copy_project,
    snakemake,
)
from modelmake.graph.snakemake import config_args, parse_jobs  # noqa: E402


def timed(project: Path, *args: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = snakemake(project, *args)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"snakemake {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return dt, r.stdout + r.stderr


def stage_seconds(project: Path) -> float:
    return sum(json.loads(p.read_text())["seconds"] for p in (project / "artifacts").glob("*/*/manifest.json"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cores", default="2")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="modelmake-bench-"))
    try:
        project = copy_project(work / "modelmake")
        cold, _ = timed(project, "--cores", args.cores)
        compute = stage_seconds(project)
        noop = statistics.median(timed(project, "-n")[0] for _ in range(args.repeats))
        floor = statistics.median(timed(project, "--version")[0] for _ in range(args.repeats))
        change = config_args(["lora.r=16"])
        jobs = parse_jobs(timed(project, "-n", *change)[1])
        incremental, _ = timed(project, "--cores", args.cores, *change)
        after = parse_jobs(timed(project, "-n", *change)[1])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = [
        ("cold end-to-end (s)", f"{cold:.1f}", f"{cold / compute:.2f}x stage compute ({compute:.1f} s)",
         "<= 300 s", cold <= 300),
        ("no-op snakemake -n (s)", f"{noop:.2f}", f"{noop / floor:.2f}x snakemake --version ({floor:.2f} s)",
         "<= 3 s", noop <= 3),
        ("lora.r=16: jobs", " ".join(f"{k}={v}" for k, v in sorted(jobs.items())), "",
         "never base/dataset/quantize/export", "finetune" in jobs and not set(jobs) & {"base", "dataset", "quantize", "export"}),
        ("lora.r=16: rebuild (s)", f"{incremental:.1f}", f"{incremental / cold:.2f}x cold", "", True),
        ("lora.r=16: second dry run", str(after or "nothing to do"), "", "nothing to do", after == {}),
    ]
    w = [max(len(str(r[i])) for r in rows) for i in range(4)]
    print(f"\nmodelmake build graph, {args.cores} cores, Python {sys.version.split()[0]}")
    print(f"{'measure':<{w[0]}}  {'value':<{w[1]}}  {'ratio':<{w[2]}}  {'target':<{w[3]}}  ok")
    for name, value, ratio, target, ok in rows:
        print(f"{name:<{w[0]}}  {value:<{w[1]}}  {ratio:<{w[2]}}  {target:<{w[3]}}  {'yes' if ok else 'NO'}")
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps({
        "cores": args.cores, "cold_s": cold, "stage_compute_s": compute, "noop_s": noop,
        "snakemake_startup_s": floor, "lora_change_jobs": jobs, "lora_change_s": incremental}, indent=2))


if __name__ == "__main__":
    main()
