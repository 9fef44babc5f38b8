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
The tables go to its section of bench/RESULTS.md (`bench:models`), the raw figures to
bench/results/models.json.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import build, mb, md_table, median_seconds, parser, read_manifest, save_json, stage_stats, write_section
from helpers.project import copy_project, nodes  # the tests' fresh-copy helpers (common put tests/ on sys.path)
from modelmake.graph.snakemake import config_args
from modelmake.recipe import RECIPE

MODELS = {"tiny Phi-3": (), "SmolLM2-135M": ("experiment=smollm2",)}
STAGES = tuple(s.name for s in RECIPE.stages if not s.over_points)  # recipe order (merged: int4_merged only)


def fp32_lora_seconds_per_step(point: dict, steps: int) -> float:
    """The baseline: LoRA on the dense fp32 model holding the AWQ weights, same data and settings."""
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelmake.models.awq_fixes import dequantize_checkpoint
    from modelmake.stages.finetune import encode, lora_model, train
    from modelmake.stages.layout import read_split

    manifest = read_manifest(point["finetune"])
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


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--cores", default="2")
    ap.add_argument("--tiny-only", action="store_true", help="skip SmolLM2 (a cold build takes minutes)")
    ap.add_argument("--project", type=Path, help="a copy of the project to build in (what it has built is "
                    "reused, so its wall times are then not cold); default: a fresh copy")
    args = ap.parse_args()
    project = args.project or copy_project(Path(tempfile.mkdtemp(prefix="modelmake-bench-")) / "modelmake")
    models = {k: v for k, v in MODELS.items() if not (args.tiny_only and v)}
    results = {}
    for name, overrides in models.items():
        wall = build(project, args.cores, overrides, tail=4000)
        point = nodes(project, *overrides)
        stats = {s: stage_stats(project, point[s]) for s in STAGES if s in point}
        q, ft = stats["quantize"]["measured"], stats["finetune"]["measured"]
        steps = min(20, read_manifest(point["finetune"])["config"]["train"]["steps"])
        results[name] = {
            "wall_s": wall,
            "stages": stats,
            "awq_search_s": q["search_seconds"], "awq_floor_s": q["search_floor_seconds"],
            "gemm_gflops": q["gemm_gflops"], "awq_floor_ratio": q["search_floor_ratio"],
            "int4_lora_s_per_step": ft["seconds_per_step"],
            "fp32_lora_s_per_step": fp32_lora_seconds_per_step(point, steps),
        }
        if overrides:
            noop = median_seconds(project, "-n", *config_args(overrides), repeats=3)
            floor = median_seconds(project, "--version", repeats=3)
            results[name] |= {"noop_dry_run_s": noop, "snakemake_version_s": floor}

    names = list(results)
    per_stage = md_table(
        ["stage", *(f"{n} {c}" for n in names for c in ("s", "peak RSS"))],
        [[s, *(c for n in names for c in (f"{results[n]['stages'][s]['seconds']:.1f}",
                                          mb(results[n]['stages'][s]['peak_rss_bytes'])))]
         for s in STAGES if all(s in results[n]["stages"] for n in names)]
        + [["**cold build, wall**", *(c for n in names for c in (f"{results[n]['wall_s']:.0f}", ""))]],
        align="l" + "r" * (2 * len(names)))
    search_and_lora = md_table(
        ["model", "AWQ search", "its FLOP floor (GEMM GFLOPS)", "ratio (target <= 3x)", "LoRA s/step int4 base",
         "fp32 LoRA baseline", "ratio"],
        [[n, f"{r['awq_search_s']:.1f} s", f"{r['awq_floor_s']:.1f} s ({r['gemm_gflops']:.0f})",
          f"{r['awq_floor_ratio']:.2f}x", f"{r['int4_lora_s_per_step']:.3f}", f"{r['fp32_lora_s_per_step']:.3f}",
          f"{r['int4_lora_s_per_step'] / r['fp32_lora_s_per_step']:.2f}x"] for n, r in results.items()],
        align="l" + "r" * 6)
    noops = [f"no-op dry run with {n} built: {r['noop_dry_run_s']:.2f} s "
             f"({r['noop_dry_run_s'] / r['snakemake_version_s']:.2f}x bare `snakemake --version`)"
             for n, r in results.items() if "noop_dry_run_s" in r]
    print("\n" + "\n\n".join([per_stage, search_and_lora, *noops]))
    save_json("models", results)

    where = ("in the given project copy (what it had built is reused: not cold)" if args.project
             else "in one fresh copy of the project")
    write_section("models", f"The tiny fixture and a real model, side by side ({args.cores} cores)", "\n\n".join([
        f"Each model's default chain built {where}, {args.cores} cores: per stage, its seconds and peak resident "
        "memory from its manifest; the last row is the build's wall time.",
        per_stage,
        "The AWQ search against its floor (the FLOPs it did, at the GEMM speed the quantize stage measured on this "
        "machine in the same run; target <= 3x), and seconds per LoRA step on the int4 AWQ base against an fp32 "
        "LoRA baseline of the same model (its AWQ weights dequantized; same data, batch and steps; measured here in "
        "the same run).",
        search_and_lora,
        *(["`snakemake -n` with the model built (the hash memo at work) against bare `snakemake --version`, "
           "median of 3 each.", *noops] if noops else []),
    ]))


if __name__ == "__main__":
    main()
