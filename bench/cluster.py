"""Cluster benchmark: a LoRA sweep from nothing, locally, on one SLURM node and on two.

    python bench/cluster.py [--ranks 4,8,16] [--json]   (root: it starts tests/cluster's two-node SLURM)

In fresh copies of the project (nothing cached) on the cluster's shared folder, the same sweep
(`lora.r=RANKS`, the whole chain: one base, dataset, quantize and export, then each point's
fine-tune, adapter, generation, evaluation and registration, and the report):
- local: `snakemake --cores 2 --max-threads 1` (two one-thread jobs at once, as two one-CPU nodes);
- SLURM, one node: n2 drained, so every job queues for n1;
- SLURM, two nodes: n1 and n2 (`modelmake build --profile slurm ... -- --max-threads 1`).
Per SLURM run: wall time, jobs, jobs per node and the nodes each stage ran on (SLURM's own record,
`scontrol show job`), the per-job overhead against the local run ((SLURM - local) / jobs), and the
wall time during which no job was running (submission, queueing, the plugin's status polling).
Both "nodes" share this machine's two cores: the point is placement and overhead, not speed-up.
`--json` prints the summary as JSON (also written to bench/results/cluster.json); the table goes to
its section of bench/RESULTS.md (`bench:cluster`).
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

from common import md_table, parser, save_json, stage_compute, timed, write_section
from helpers.cluster import ONE_CPU, Cluster, ClusterUnavailable, submitted  # (common put tests/ on sys.path)
from helpers.project import copy_project
from modelmake.graph.snakemake import config_args, snakemake_exe


def in_jobs(logs: list[Path]) -> float:
    """Seconds during which at least one SLURM job was running (its Snakemake started -> its last
    line), from the job logs: the rest of the SLURM wall time is submission, queueing and the
    plugin's status polling between jobs."""
    spans = []
    for log in logs:
        text = log.read_text()
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


def slurm_sweep(cluster: Cluster, project: Path, ranks: str) -> dict:
    seconds, out = timed(project, "modelmake", "build", "--profile", "slurm", f"lora.r={ranks}", "--", *ONE_CPU,
                         timeout=3600, env=cluster.env)
    jobs = submitted(out)
    per_node, per_stage = Counter(), defaultdict(set)
    for job, log in jobs:
        node = cluster.job(job)["NodeList"]
        per_node[node] += 1
        per_stage[log.parent.parent.name.removeprefix("rule_")].add(node)
    compute, artifacts = stage_compute(project)
    return {"seconds": round(seconds, 1), "jobs": len(jobs), "jobs_per_node": dict(sorted(per_node.items())),
            "nodes_per_stage": {s: sorted(n) for s, n in sorted(per_stage.items())},
            "stage_compute_s": round(compute, 1), "artifacts": artifacts,
            "no_job_running_s": round(seconds - in_jobs([log for _, log in jobs]), 1)}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--ranks", default="4,8,16")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args()
    try:
        cluster = Cluster.up()
    except ClusterUnavailable as e:
        sys.exit(f"cannot start the test cluster: {e}")
    try:
        local = copy_project(cluster.shared / "local")
        tl, _ = timed(local, snakemake_exe(), "--cores", "2", *ONE_CPU, *config_args([f"lora.r={args.ranks}"]),
                      timeout=3600)
        cl, nl = stage_compute(local)
        drained = cluster.slurm("scontrol", "update", "nodename=n2", "state=drain", "reason=bench: one node")
        assert drained.returncode == 0, drained.stderr
        one = slurm_sweep(cluster, copy_project(cluster.shared / "one"), args.ranks)
        resumed = cluster.slurm("scontrol", "update", "nodename=n2", "state=resume")
        assert resumed.returncode == 0, resumed.stderr
        two = slurm_sweep(cluster, copy_project(cluster.shared / "two"), args.ranks)
    finally:
        cluster.down()
    for run in (one, two):
        run["overhead_per_job_s"] = round((run["seconds"] - tl) / run["jobs"], 1)
    summary = {"sweep": f"lora.r={args.ranks}", "nodes": ["n1", "n2"], "cpus_per_node": 1,
               "local": {"seconds": round(tl, 1), "artifacts": nl, "stage_compute_s": round(cl, 1)},
               "one_node": one, "two_nodes": two, "speed_up_two_vs_one": round(one["seconds"] / two["seconds"], 2)}
    save_json("cluster", summary)
    if args.json:
        print(json.dumps(summary, indent=2))
    rows = [["local (`snakemake --cores 2 --max-threads 1`)", f"{tl:.1f} s",
             f"{nl} artifacts, their own compute {cl:.1f} s"]]
    for label, run in (("SLURM, one node (n2 drained)", one), ("SLURM, two nodes", two)):
        per_node = ", ".join(f"{n} {k}" for n, k in run["jobs_per_node"].items())
        both = [s for s, n in run["nodes_per_stage"].items() if len(n) > 1]
        rows.append([label, f"{run['seconds']:.1f} s",
                     f"{run['jobs']} jobs ({per_node}); {run['seconds'] / tl:.2f}x local; "
                     f"overhead {run['overhead_per_job_s']:.1f} s a job; no job running {run['no_job_running_s']:.1f} s"
                     + (f"; stages on both nodes: {', '.join(both)}" if both else "")])
    rows.append(["two nodes vs one", f"{summary['speed_up_two_vs_one']:.2f}x",
                 "one one-CPU node runs one job at a time (one of this machine's 2 cores), two run two: at most "
                 "2x, as local --cores 2; no more cores than that"])
    if min(one["overhead_per_job_s"], two["overhead_per_job_s"]) < 0:
        rows.append(["note", "-", "a negative overhead: the machine's load changed between the runs (other work "
                     "on its 2 cores); the time with no job running is the overhead figure to read"])
    title = f"SLURM, one node vs two (this machine), sweep lora.r={args.ranks}"
    table = md_table(["run", "wall", "jobs and overhead"], rows)
    print("\n".join([f"## {title}", "", table, ""]), file=sys.stderr if args.json else sys.stdout)
    write_section("cluster", title, "\n\n".join([
        f"Fresh copies of the project (nothing cached): the LoRA sweep `lora.r={args.ranks}` from nothing, locally "
        "(two one-thread jobs at once) and through SLURM (`modelmake build --profile slurm`, one sbatch per "
        "artifact) on the test cluster's two one-CPU nodes (tests/cluster: own hostname, /tmp and boot id each), "
        "first with n2 drained, then with both; measured in the same run. Overhead per job: (SLURM - local) / "
        "jobs. Both nodes share this machine's two cores, so two nodes are no faster than one: the table shows "
        "placement (jobs per node, SLURM's own record) and overhead. Raw figures: `python bench/cluster.py --json`.",
        table,
    ]))


if __name__ == "__main__":
    main()
