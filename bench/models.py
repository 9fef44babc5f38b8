"""The tiny fixture and a real model, side by side: per-stage time and peak memory, the AWQ
search against its FLOP floor, and the int4 LoRA step against an fp32 LoRA baseline.

    python bench/models.py [--cores 2] [--tiny-only] [--project DIR]

Builds, cold, in a fresh copy of the project: the default chain (tiny Phi-3) and
`experiment=smollm2` (SmolLM2-135M-Instruct), then prints:
- per stage: seconds and peak resident memory (from the manifests) for both models;
- quantize: the AWQ search's seconds vs its floor, the FLOPs it did at the GEMM speed the stage
  measured on this machine in the same run (target: within 3x);
- finetune: seconds per step on the int4 AWQ base vs an fp32 LoRA baseline of the same model
  (the same weights dequantized, same data, batch and steps), measured here in the same run;
- no-op plan with SmolLM2 built: `snakemake -n` vs `snakemake --version` (the hash memo at work).
Results also go to bench/results/models.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from helpers.project import (  # noqa: E402  (the tests' fresh-copy helpers)
    copy_project,
    nodes,
    snakemake,
)
from modelmake.graph.snakemake import config_args  # noqa: E402

MODELS = {"tiny Phi-3": (), "SmolLM2-135M": ("experiment=smollm2",)}
STAGES = ("base", "dataset", "quantize", "finetune", "export", "adapter", "generate", "evaluate")


def build(project: Path, cores: str, overrides: tuple[str, ...]) -> float:
    t0 = time.perf_counter()
    r = snakemake(project, "--cores", cores, *config_args(overrides))
    if r.returncode != 0:
        sys.exit(f"build {overrides} failed:\n{r.stderr[-4000:]}")
    return time.perf_counter() - t0


def fp32_lora_seconds_per_step(point: dict, steps: int) -> float:
    """The baseline: LoRA on the dense fp32 model holding the AWQ weights, same data and settings."""
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelmake.stages.export import dequantize_checkpoint
    from modelmake.stages.finetune import encode, lora_model, train
    from modelmake.stages.layout import read_split

    manifest = json.loads(point["finetune"].manifest.read_text())
    cfg = OmegaConf.create(manifest["config"])
    qdir, ddir = point["quantize"].path / "model", point["dataset"].path
    torch.set_num_threads(2)
    torch.manual_seed(cfg.train.seed)
    with tempfile.TemporaryDirectory() as scratch:
        dequantize_checkpoint(qdir, Path(scratch) / "dense")
        model = AutoModelForCausalLM.from_pretrained(Path(scratch) / "dense", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(qdir)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model = lora_model(model, cfg.lora)
    t = OmegaConf.merge(cfg.train, {"steps": steps, "eval_every": steps + 1})
    ex = encode(tok, read_split(ddir, "train"), t.max_seq_len)
    with tempfile.TemporaryDirectory() as scratch:
        return train(model, ex, ex[: t.batch_size], t, pad, Path(scratch) / "log.csv")["seconds_per_step"]


def mb(n) -> str:
    return f"{n / 2**20:,.0f} MB" if n else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cores", default="2")
    ap.add_argument("--tiny-only", action="store_true", help="skip SmolLM2 (a cold build takes minutes)")
    ap.add_argument("--project", type=Path, help="a copy of the project to build in (what it has built is "
                    "reused, so its wall times are then not cold); default: a fresh copy")
    args = ap.parse_args()
    project = args.project or copy_project(Path(tempfile.mkdtemp(prefix="modelmake-bench-")) / "modelmake")
    models = {k: v for k, v in MODELS.items() if not (args.tiny_only and v)}
    results = {}
    for name, overrides in models.items():
        wall = build(project, args.cores, overrides)
        point = nodes(project, *overrides)
        manifests = {s: json.loads(point[s].manifest.read_text()) for s in STAGES}
        q, ft = manifests["quantize"]["metrics"], manifests["finetune"]["metrics"]
        steps = min(20, manifests["finetune"]["config"]["train"]["steps"])
        results[name] = {
            "wall_s": wall,
            "stages": {s: {"seconds": m["seconds"], "peak_rss_bytes": m.get("peak_rss_bytes")} for s, m in manifests.items()},
            "awq_search_s": q["search_seconds"], "awq_floor_s": q["search_floor_seconds"],
            "gemm_gflops": q["gemm_gflops"], "awq_floor_ratio": q["search_floor_ratio"],
            "int4_lora_s_per_step": ft["seconds_per_step"],
            "fp32_lora_s_per_step": fp32_lora_seconds_per_step(point, steps),
        }
        if overrides:
            noop = statistics.median(_timed(project, "-n", *config_args(overrides)) for _ in range(3))
            floor = statistics.median(_timed(project, "--version") for _ in range(3))
            results[name] |= {"noop_dry_run_s": noop, "snakemake_version_s": floor}

    names = list(results)
    print("\n| stage | " + " | ".join(f"{n} s | {n} peak RSS" for n in names) + " |")
    print("|---|" + "---:|" * (2 * len(names)))
    for s in STAGES:
        cells = [f"{results[n]['stages'][s]['seconds']:.1f} | {mb(results[n]['stages'][s]['peak_rss_bytes'])}" for n in names]
        print(f"| {s} | " + " | ".join(cells) + " |")
    print("| **cold build, wall** | " + " | ".join(f"{results[n]['wall_s']:.0f} | " for n in names) + " |")
    print("\n| model | AWQ search | its FLOP floor (GEMM GFLOPS) | ratio (target <= 3x) | "
          "LoRA s/step int4 base | fp32 LoRA baseline | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for n in names:
        r = results[n]
        print(f"| {n} | {r['awq_search_s']:.1f} s | {r['awq_floor_s']:.1f} s ({r['gemm_gflops']:.0f}) | "
              f"{r['awq_floor_ratio']:.2f}x | {r['int4_lora_s_per_step']:.3f} | {r['fp32_lora_s_per_step']:.3f} | "
              f"{r['int4_lora_s_per_step'] / r['fp32_lora_s_per_step']:.2f}x |")
    for n in names:
        if "noop_dry_run_s" in results[n]:
            r = results[n]
            print(f"\nno-op dry run with {n} built: {r['noop_dry_run_s']:.2f} s "
                  f"({r['noop_dry_run_s'] / r['snakemake_version_s']:.2f}x bare `snakemake --version`)")
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "models.json").write_text(json.dumps(results, indent=2))


def _timed(project: Path, *args: str) -> float:
    t0 = time.perf_counter()
    snakemake(project, *args)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
