"""Sweep benchmark: what sharing saves, and how fast the int4 ONNX model decodes.

    python bench/sweep.py [--ranks 4,8,16] [--cores 2]

From one run, in fresh copies of the project (nothing cached):
- one point built cold (the default target), time T1;
- the sweep `lora.r=<ranks>` built through the graph in another fresh copy, time TS: one base,
  dataset, quantize and export shared by all points, one finetune/adapter/evaluate per point;
- the ratio TS / (N x T1): the sweep's time over building its N points without sharing (each
  point alone costs T1, measured here);
- onnxruntime-genai int4 (+LoRA) decode tokens/s over transformers fp32 (+LoRA) on the same
  weights, one thread, each engine in its own process, median of repeats (the evaluate stage's
  figures). Target (issue 4): >= 15x on the tiny model.
The table goes to its section of bench/RESULTS.md (`bench:sweep`), the raw figures and the
sweep's report to bench/results/.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from common import RESULTS_DIR, aligned, build, md_table, parser, save_json, stage_stats, write_section
from helpers.project import copy_project  # the tests' fresh-copy helpers (common put tests/ on sys.path)
from modelmake.recipe import build_plan


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--ranks", default="4,8,16")
    ap.add_argument("--cores", default="2")
    args = ap.parse_args()
    sweep = [f"lora.r={args.ranks}"]
    n = len(args.ranks.split(","))
    work = Path(tempfile.mkdtemp(prefix="modelmake-bench-"))
    try:
        one = copy_project(work / "one")
        t1 = build(one, args.cores, [])
        # what evaluate measured of this machine (decode speed) is in the build journal, not the artifact
        ev = stage_stats(one, build_plan().finals[0]["evaluate"])["measured"]
        many = copy_project(work / "many")
        ts = build(many, args.cores, sweep)
        plan = build_plan(overrides=sweep)
        built = {s: len(list((many / "artifacts" / s).iterdir()))
                 for s in ("quantize", "export", "finetune", "adapter")}
        report = many / plan.report.path / "report.md"
        report_text = report.read_text()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    speedup = ev["ort_int4_tokens_per_s"] / ev["hf_fp32_tokens_per_s"]
    rows = [
        ("one point, cold (s)", f"{t1:.1f}", "T1", ""),
        (f"sweep of {n}, shared (s)", f"{ts:.1f}", f"{ts / (n * t1):.2f}x of {n} x T1 = {n * t1:.1f} s", "< 1"),
        ("artifacts built by the sweep", " ".join(f"{k}={v}" for k, v in built.items()), "",
         "quantize=1 export=1"),
        ("ORT int4+LoRA decode tok/s", f"{ev['ort_int4_tokens_per_s']:.0f}", "", ""),
        ("HF fp32+LoRA decode tok/s", f"{ev['hf_fp32_tokens_per_s']:.0f}", "", ""),
        ("ORT / HF decode speed", f"{speedup:.1f}x", "one thread, own process, median", ">= 15x"),
        ("time to first token ORT / HF (ms)",
         f"{1000 * ev['ort_int4_ttft_s']:.1f} / {1000 * ev['hf_fp32_ttft_s']:.1f}", "", ""),
    ]
    print(f"\nmodelmake sweep benchmark, {args.cores} cores, Python {sys.version.split()[0]}")
    print("\n".join(aligned(rows)))
    save_json("sweep", {"one_point_s": t1, "sweep_s": ts, "points": n, "built": built,
                        "ort_over_hf": speedup, "evaluate": ev})
    (RESULTS_DIR / "sweep_report.md").write_text(report_text)
    how = (f"Fresh copies of the project (nothing cached), {args.cores} cores: the sweep `lora.r={args.ranks}` built "
           f"through the graph (one base, dataset, quantize and export shared) against its {n} points built without "
           "sharing (N x T1, T1 one point built cold, measured here); decode speed of onnxruntime-genai int4+LoRA "
           "against transformers fp32+LoRA on the same weights (the evaluate stage's figures: one thread, each engine "
           "in its own process, median of repeats); target from issue 4.")
    write_section("sweep", f"Sweep sharing and int4 decode speed ({args.cores} cores)",
                  how + "\n\n" + md_table(("measure", "value", "ratio", "target"), rows))


if __name__ == "__main__":
    main()
