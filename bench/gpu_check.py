"""The GPU check's phases (bench/gpu.sh runs this): AWQ, LoRA steps and the export on a
Phi-3.5-mini-shaped model with random weights made on the machine, a few decoder layers, each phase
in its own process with its own timeout, extrapolated to the 32 layers of Phi-3.5-mini and set
against the Olive lab's A100 figures (AWQ 8 min, 100 LoRA steps 6 min, export 5 min).

    python bench/gpu_check.py OUT [--layers 4] [--shape phi35|tiny] [--device cuda|cpu] [--budget 540]

`--shape tiny --device cpu` runs every phase's code on small shapes on a CPU (what could be checked
without a GPU machine). Results go to OUT as they come: OUT/phases.jsonl (one line a phase: its
figures, or why it failed or ran out of time), OUT/<phase>.log, OUT/summary.md rewritten after
each phase. Nothing here needs a network: the model and its tokenizer are made here, calibration
and training texts are random tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPES = {  # Phi-3.5-mini-instruct's config.json, with a 4k position table (the shape is what costs)
    "phi35": {"hidden_size": 3072, "intermediate_size": 8192, "num_attention_heads": 32, "num_key_value_heads": 32,
              "vocab_size": 32064, "max_position_embeddings": 4096, "layers_full": 32},
    "tiny": {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 4,
             "vocab_size": 1088, "max_position_embeddings": 512, "layers_full": 32},
}
OLIVE_A100_S = {"awq": 8 * 60, "lora": 6 * 60, "export": 5 * 60}  # the Olive lab's figures, 32 layers
LORA_STEPS = 100  # the Olive lab's fine-tune: 100 steps
PHASES = ("make", "awq", "lora", "export")
TIMEOUTS = {"make": 90, "awq": 240, "lora": 150, "export": 120}  # seconds; 600 in all


class Settings(dict):
    """A config group as the stages read it (attributes and .get), without omegaconf."""

    __getattr__ = dict.__getitem__


# --- the phases (each runs in its own process: python bench/gpu_check.py --phase NAME ...) ------------
def phase_make(out: Path, shape: dict, layers: int, device: str) -> dict:
    """A Phi-3 model of `shape` with random weights (fp16 on a GPU), `layers` decoder layers, and a
    word-level tokenizer over its vocabulary (`t0 t1 ...`), saved as a Hugging Face folder."""
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import Phi3Config, Phi3ForCausalLM, PreTrainedTokenizerFast

    cfg = Phi3Config(hidden_size=shape["hidden_size"], intermediate_size=shape["intermediate_size"],
                     num_attention_heads=shape["num_attention_heads"], num_key_value_heads=shape["num_key_value_heads"],
                     vocab_size=shape["vocab_size"], max_position_embeddings=shape["max_position_embeddings"],
                     original_max_position_embeddings=shape["max_position_embeddings"],  # not LongRoPE
                     num_hidden_layers=layers, rope_scaling=None, tie_word_embeddings=False,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    dtype = torch.float16 if device == "cuda" else torch.float32
    t0 = time.perf_counter()
    with torch.device(device):
        model = Phi3ForCausalLM(cfg).to(dtype)
    model.save_pretrained(out / "model", safe_serialization=True)
    vocab = {f"t{i}": i for i in range(shape["vocab_size"])}
    tk = Tokenizer(WordLevel(vocab, unk_token="t0"))
    tk.pre_tokenizer = WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="t0", pad_token="t0", bos_token="t1",
                            eos_token="t2").save_pretrained(out / "model")
    params = sum(p.numel() for p in model.parameters())
    return {"seconds": time.perf_counter() - t0, "parameters": params, "layers": layers}


def random_texts(n: int, length: int, vocab: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(f"t{rng.randrange(3, vocab)}" for _ in range(length)) for _ in range(n)]


def phase_awq(out: Path, shape: dict, layers: int, device: str) -> dict:
    """modelmake's quantize (AutoAWQ with SafeAwqQuantizer: the scale and clip searches) at AutoAWQ's
    defaults: group 128, zero point, 128 calibration samples of 512 tokens."""
    from types import SimpleNamespace

    from modelmake.stages.quantize import quantize

    q = SimpleNamespace(zero_point=True, group_size=128 if shape["hidden_size"] % 128 == 0 else 64, w_bit=4,
                        version="gemm", calib_samples=128, calib_seq_len=512, apply_clip=True, duo_scaling=True)
    # under 512 tokens each (AutoAWQ drops longer ones), joined by AutoAWQ into 512-token blocks
    texts = random_texts(q.calib_samples, 300, shape["vocab_size"], 0)
    t0 = time.perf_counter()
    run = quantize(str(out / "model"), out / "awq", q, texts, False)
    return {"seconds": time.perf_counter() - t0, "search_seconds": run["search_seconds"],
            "gflop": run["search_gflop_scale"] + run["search_gflop_clip"], "group_size": q.group_size}


def phase_lora(out: Path, shape: dict, layers: int, device: str, steps: int = 6) -> dict:
    """LoRA (peft, r=8 on every projection) on the int4 AWQ model, batch 8 x 128 tokens, AdamW: the
    seconds a step at `layers` and at half of them (layers dropped in memory), so the per-layer cost
    and the fixed cost (embedding, lm_head) extrapolate apart."""
    import torch
    from peft import LoraConfig, get_peft_model

    from modelmake.models.awq_fixes import load_awq_model

    dtype = torch.float16 if device == "cuda" else torch.float32
    results = {}
    for n in sorted({layers, max(1, layers // 2)}, reverse=True):
        base = load_awq_model(out / "awq", dtype=dtype, device=device)
        base.model.layers = base.model.layers[:n]
        base.config.num_hidden_layers = n
        model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        gen = torch.Generator().manual_seed(0)
        times = []
        for _ in range(steps + 1):  # the first warms up
            ids = torch.randint(3, shape["vocab_size"], (8, 128), generator=gen).to(device)
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        results[n] = sorted(times[1:])[len(times[1:]) // 2]
        del model, base, opt
    return {"seconds_per_step": {str(k): v for k, v in results.items()}, "loss": float(loss)}


def phase_export(out: Path, shape: dict, layers: int, device: str) -> dict:
    """The onnxruntime-genai builder on the AWQ checkpoint, as the export stage runs it (int4, the
    CUDA execution provider on a GPU), LoRA inputs added by modelmake's pass."""
    from modelmake.stages.export import add_lora, run_builder

    e = Settings(precision="int4", execution_provider="cuda" if device == "cuda" else "cpu",
                 accuracy_level=0 if device == "cuda" else 4, exclude_lm_head=True, lm_head="fp32")
    t0 = time.perf_counter()
    run_builder(out / "awq", out / "onnx", e, out / "builder-cache", out / "export-builder.log")
    built = time.perf_counter() - t0
    config = json.loads((out / "awq" / "config.json").read_text())
    spec = add_lora(out / "onnx", config, ["self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj",
                                           "mlp.down_proj"])
    return {"seconds": time.perf_counter() - t0, "builder_seconds": built, "lora_inputs": len(spec["inputs"])}


# --- extrapolation and the summary --------------------------------------------------------------------
def extrapolate(phase: str, r: dict, layers: int, full: int) -> float | None:
    """The phase's seconds at `full` layers: AWQ and the export are per-layer loops (their time
    scales by full/layers); a LoRA step is a + b * layers, fitted on the two layer counts, times 100."""
    if phase == "awq":
        return r["seconds"] * full / layers
    if phase == "export":
        return r["seconds"] * full / layers
    if phase == "lora":
        pts = sorted((int(k), v) for k, v in r["seconds_per_step"].items())
        if len(pts) == 1:
            return pts[0][1] * full / pts[0][0] * LORA_STEPS
        (l1, t1), (l2, t2) = pts[0], pts[-1]
        b = (t2 - t1) / (l2 - l1)
        a = t1 - b * l1
        return (a + b * full) * LORA_STEPS
    return None


def summary(out: Path, args, rows: list[dict]) -> str:
    lines = [f"# GPU check ({args.shape} shape, {args.layers} layers made, device {args.device})", "",
             "| phase | status | measured | extrapolated to 32 layers | Olive lab, A100 | ratio |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        ph = r["phase"]
        if r["status"] != "ok":
            lines.append(f"| {ph} | {r['status']}: {r.get('why', '')} | | | | |")
            continue
        meas = (f"{r['result']['seconds']:.1f} s" if "seconds" in r["result"]
                else ", ".join(f"{k} layers {v:.3f} s/step" for k, v in r["result"]["seconds_per_step"].items()))
        ext = r.get("extrapolated_s")
        olive = OLIVE_A100_S.get(ph)
        lines.append(f"| {ph} | ok | {meas} | {'' if ext is None else f'{ext / 60:.1f} min'} | "
                     f"{'' if olive is None else f'{olive / 60:.0f} min'} | "
                     f"{'' if ext is None or olive is None else f'{ext / olive:.2f}x'} |")
    lines += ["", "LoRA: 100 steps of batch 8 x 128 tokens, r=8 on every projection; AWQ: group 128, zero point, "
              "128 samples of ~300 tokens joined into 512-token blocks, clip search on; export: the builder (int4) "
              "and modelmake's LoRA pass.",
              f"Machine: {machine(args.device)}"]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def machine(device: str) -> str:
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() else "none"
        return f"torch {torch.__version__}, GPU {gpu}, {os.cpu_count()} CPUs"
    except Exception as e:  # noqa: BLE001 - a summary line, whatever went wrong
        return f"torch not importable ({e})"


def run_phases(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shape = SHAPES[args.shape]
    rows: list[dict] = []
    started = time.perf_counter()
    for ph in PHASES:
        left = args.budget - (time.perf_counter() - started)
        limit = min(TIMEOUTS[ph], left)
        row = {"phase": ph, "timeout_s": round(limit)}
        earlier = out / f"{ph}.json"
        if args.only and ph not in args.only:
            if earlier.exists():  # a phase of an earlier run in this folder, reused
                row |= {"status": "ok", "result": json.loads(earlier.read_text()), "reused": True}
                row["extrapolated_s"] = extrapolate(ph, row["result"], args.layers, shape["layers_full"])
            else:
                row |= {"status": "skipped", "why": "not in --only, and no earlier result here"}
        elif limit < 10:
            row |= {"status": "skipped", "why": f"{left:.0f} s of the {args.budget} s budget left"}
        elif any(r["status"] != "ok" for r in rows if r["phase"] in needs(ph)):
            row |= {"status": "skipped", "why": f"needs {', '.join(needs(ph))}, which did not finish"}
        else:
            cmd = [sys.executable, __file__, str(out), "--phase", ph, "--shape", args.shape, "--layers",
                   str(args.layers), "--device", args.device]
            t0 = time.perf_counter()
            with (out / f"{ph}.log").open("w") as log:
                try:
                    p = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=limit)
                    rc = p.returncode
                except subprocess.TimeoutExpired:
                    rc = None
            row["wall_s"] = time.perf_counter() - t0
            res = out / f"{ph}.json"
            if rc is None:
                row |= {"status": "timeout", "why": f"over {limit:.0f} s (log: {ph}.log)"}
            elif rc != 0 or not res.exists():
                tail = [x for x in (out / f"{ph}.log").read_text(errors="replace").splitlines() if x.strip()]
                row |= {"status": "failed", "why": (tail[-1] if tail else f"exit {rc}")[:240]}
            else:
                row |= {"status": "ok", "result": json.loads(res.read_text())}
                row["extrapolated_s"] = extrapolate(ph, row["result"], args.layers, shape["layers_full"])
        rows.append(row)
        with (out / "phases.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        summary(out, args, rows)
        print(f"gpu check: {ph}: {row['status']}" + (f" ({row['why']})" if row.get("why") else "")
              + (f", {row['wall_s']:.1f} s" if "wall_s" in row else ""), flush=True)
    print(summary(out, args, rows), flush=True)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def needs(ph: str) -> tuple[str, ...]:
    return {"make": (), "awq": ("make",), "lora": ("awq",), "export": ("awq",)}[ph]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="folder for the results (created; written as the phases finish)")
    ap.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="phi35")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers made (default 4; 32 is Phi-3.5-mini)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--budget", type=int, default=540, help="seconds for every phase together (default 540)")
    ap.add_argument("--only", type=lambda v: set(v.split(",")), default=None,
                    help="run these phases (comma list); the others' results of an earlier run in OUT are reused")
    args = ap.parse_args()
    if args.layers < 2:
        ap.error("--layers: at least 2 (the LoRA phase fits a fixed and a per-layer cost on two layer counts)")
    if args.phase is None:
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                print("gpu check: torch sees no CUDA device here (torch.cuda.is_available() is False); "
                      "use --device cpu --shape tiny to run the phases' code on a CPU", file=sys.stderr)
                return 2
        return run_phases(args)
    out, shape = Path(args.out), SHAPES[args.shape]
    fn = {"make": phase_make, "awq": phase_awq, "lora": phase_lora, "export": phase_export}[args.phase]
    import logging

    logging.basicConfig(level=logging.INFO)
    result = fn(out, shape, args.layers, args.device)
    (out / f"{args.phase}.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
