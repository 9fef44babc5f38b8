"""Build-graph benchmark: cold end-to-end time, no-op time, and what a LoRA-only change rebuilds.

Runs in a fresh copy of the project (nothing cached), on however many cores it is given:
    python bench/pipeline.py [--cores 2] [--repeats 5]
Prints a table, with ratios against baselines measured in the same run:
- cold: wall time of `snakemake --cores N` vs the sum of the stages' own build times
  (from their manifests): the ratio is the build graph's overhead (process start, imports).
- no-op: `snakemake -n` on the built tree vs `snakemake --version` (the bare start-up floor).
- LoRA-only change (lora.r=16): jobs per rule from Snakemake's dry run, then the real rebuild
  time vs the cold time.
Targets on 2 cores (issue 2): cold <= 300 s, no-op <= 3 s. The table goes to its section of
bench/RESULTS.md (`bench:pipeline`), the raw figures to bench/results/pipeline.json.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from common import aligned, md_table, median_seconds, parser, save_json, stage_seconds, timed_snakemake, write_section
from helpers.project import copy_project  # the tests' fresh-copy helpers (common put tests/ on sys.path)
from modelmake.graph.snakemake import config_args, parse_jobs


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--cores", default="2")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="modelmake-bench-"))
    try:
        project = copy_project(work / "modelmake")
        cold, _ = timed_snakemake(project, "--cores", args.cores)
        compute = stage_seconds(project)
        noop = median_seconds(project, "-n", repeats=args.repeats)
        floor = median_seconds(project, "--version", repeats=args.repeats)
        change = config_args(["lora.r=16"])
        jobs = parse_jobs(timed_snakemake(project, "-n", *change)[1])
        incremental, _ = timed_snakemake(project, "--cores", args.cores, *change)
        after = parse_jobs(timed_snakemake(project, "-n", *change)[1])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = [
        ("cold end-to-end (s)", f"{cold:.1f}", f"{cold / compute:.2f}x stage compute ({compute:.1f} s)",
         "<= 300 s", cold <= 300),
        ("no-op snakemake -n (s)", f"{noop:.2f}", f"{noop / floor:.2f}x snakemake --version ({floor:.2f} s)",
         "<= 3 s", noop <= 3),
        ("lora.r=16: jobs", " ".join(f"{k}={v}" for k, v in sorted(jobs.items())), "",
         "never base/dataset/quantize/export",
         "finetune" in jobs and not set(jobs) & {"base", "dataset", "quantize", "export"}),
        ("lora.r=16: rebuild (s)", f"{incremental:.1f}", f"{incremental / cold:.2f}x cold", "", True),
        ("lora.r=16: second dry run", str(after or "nothing to do"), "", "nothing to do", after == {}),
    ]
    table = [(name, value, ratio, target, "yes" if ok else "NO") for name, value, ratio, target, ok in rows]
    print(f"\nmodelmake build graph, {args.cores} cores, Python {sys.version.split()[0]}")
    print("\n".join(aligned(table, header=("measure", "value", "ratio", "target", "ok"))))
    save_json("pipeline", {
        "cores": args.cores, "cold_s": cold, "stage_compute_s": compute, "noop_s": noop,
        "snakemake_startup_s": floor, "lora_change_jobs": jobs, "lora_change_s": incremental})
    how = (f"A fresh copy of the project (nothing cached) on {args.cores} cores, against baselines measured in the "
           "same run: the cold `snakemake --cores N` vs the sum of the stages' own build times (their manifests: "
           f"the ratio is the graph's overhead), the no-op `snakemake -n` (median of {args.repeats}) vs bare "
           "`snakemake --version` (the start-up floor), the `lora.r=16` rebuild vs the cold build, its jobs from "
           "Snakemake's dry run; targets on 2 cores from issue 2.")
    write_section("pipeline", f"Build graph: cold, no-op and a LoRA-only change ({args.cores} cores)",
                  how + "\n\n" + md_table(("measure", "value", "ratio", "target", "ok"), table))


if __name__ == "__main__":
    main()
