"""Decode speed and time to first token, one engine per process, one thread (or --threads N),
median of repeats.

    python -m modelmake.models.speed ort --model DIR [--adapter FILE] --prompt-ids 1,2,3 --new-tokens 64
    python -m modelmake.models.speed hf  --model DIR [--adapter DIR]  --prompt-ids 1,2,3 --new-tokens 64

Each engine runs in its own process (`measure` starts them): timing two engines, or two threads,
side by side on a small machine gives numbers that are off by several times.
Prints one JSON object: tokens_per_s (decode, after the first token), ttft_s (prompt in -> first
token out; for onnxruntime-genai without creating the Generator, which setup_s reports), the samples.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from modelmake.core.atomic import scratch_dir
from modelmake.core.lifecycle import pdeathsig


def _threads_copy(model_dir: Path, scratch: Path, threads: int = 1) -> Path:
    """The model folder with `intra_op_num_threads: threads` in its genai_config (files linked, not copied)."""
    for f in model_dir.iterdir():
        if f.name != "genai_config.json":
            (scratch / f.name).symlink_to(f.resolve())
    cfg = json.loads((model_dir / "genai_config.json").read_text())
    opts = cfg["model"]["decoder"].setdefault("session_options", {})
    opts["intra_op_num_threads"] = threads
    opts["inter_op_num_threads"] = 1
    (scratch / "genai_config.json").write_text(json.dumps(cfg))
    return scratch


def run_ort(model_dir: Path, adapter: Path | None, ids: list[int], new_tokens: int, repeats: int,
            threads: int = 1) -> dict:
    import onnxruntime_genai as og

    with scratch_dir("speed") as scratch:
        model = og.Model(str(_threads_copy(model_dir, scratch, threads)))
        adapters = None
        if adapter:
            adapters = og.Adapters(model)
            adapters.load(str(adapter), "a")
        ttft, rates, setup = [], [], []
        for _ in range(repeats + 1):  # the first run warms up
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=len(ids) + new_tokens, min_length=len(ids) + new_tokens,
                                      do_sample=False)
            t0 = time.perf_counter()
            gen = og.Generator(model, params)
            if adapters is not None:
                gen.set_active_adapter(adapters, "a")
            ts = time.perf_counter()  # Generator setup (~12 ms here) is per request but not prompt work
            gen.append_tokens(ids)
            gen.generate_next_token()
            t1 = time.perf_counter()
            n = 1
            while not gen.is_done():
                gen.generate_next_token()
                n += 1
            t2 = time.perf_counter()
            ttft.append(t1 - ts)
            setup.append(ts - t0)
            rates.append((n - 1) / (t2 - t1))
    return _summary(ttft[1:], rates[1:], n, threads) | {"setup_s": statistics.median(setup[1:])}


def run_hf(model_dir: Path, adapter: Path | None, ids: list[int], new_tokens: int, repeats: int,
           threads: int = 1) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).eval()
    x = torch.tensor([ids])
    ttft, rates = [], []
    with torch.no_grad():
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            model.generate(x, max_new_tokens=1, do_sample=False)
            t1 = time.perf_counter()
            out = model.generate(x, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            t2 = time.perf_counter()
            n = out.shape[1] - len(ids)
            ttft.append(t1 - t0)
            rates.append((n - 1) / max(1e-9, (t2 - t1) - (t1 - t0)))
    return _summary(ttft[1:], rates[1:], n, threads)


def _summary(ttft, rates, n, threads) -> dict:
    return {"tokens_per_s": statistics.median(rates), "ttft_s": statistics.median(ttft), "new_tokens": n,
            "samples_tokens_per_s": rates, "threads": threads}


def measure(engine: str, model: Path, adapter: Path | None, ids: list[int], new_tokens: int, repeats: int,
            threads: int = 1) -> dict:
    """Run one engine in a fresh process with `threads` threads (one by default) and return its JSON."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "modelmake.models.speed", engine, "--model", str(model),
           "--prompt-ids", ",".join(map(str, ids)), "--new-tokens", str(new_tokens), "--repeats", str(repeats),
           "--threads", str(threads)]
    if adapter:
        cmd += ["--adapter", str(adapter)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=pdeathsig)  # dies with the stage
    if r.returncode != 0:
        raise RuntimeError(f"speed {engine} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("engine", choices=["ort", "hf"])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--adapter", type=Path)
    ap.add_argument("--prompt-ids", required=True)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    ids = [int(x) for x in a.prompt_ids.split(",")]
    fn = run_ort if a.engine == "ort" else run_hf
    print(json.dumps(fn(a.model, a.adapter, ids, a.new_tokens, a.repeats, a.threads)))


if __name__ == "__main__":
    main()
