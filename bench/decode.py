"""What the deployed model costs per token: the decode table, one run, one model, one prompt, the
same thread counts for every engine.

    python bench/decode.py                        # experiment=smollm2 if it is built here, else the tiny model
    python bench/decode.py --experiment tiny --threads 1,2 --new-tokens 64 --repeats 5

Rows (each engine in its own process, `--threads` threads):
- the ONNX int4 graph built WITHOUT LoRA inputs (the builder's own graph, rebuilt here from the
  quantize artifact with the export's settings, under .cache/decode/);
- the multi-LoRA graph modelmake ships (export), with no adapter active, and with the adapter;
- the merged graphs (export=int4_merged: merged-AWQ and merged-RTN), where built;
- the no-LoRA graph with an 8-bit and a 4-bit lm_head (export.lm_head=int8/int4), with their
  held-out perplexity and KL against the fp32-head graph;
- llama.cpp's `llama-bench` on the model's packaged GGUF (built from the llama-cpp-python sdist
  into .cache/llama.cpp by bench/llamacpp.py if missing; a row that cannot run says why);
- Hugging Face transformers, fp32 eager, with the adapter (peft), as `evaluate` measures it.
Columns: decode tokens/s, time to first token, the bytes a token reads and the ratio of the
measured time per token to the bandwidth floor (those bytes over the memory bandwidth measured in
the same run; method in `bandwidth`). Then the issue's targets, met or not, and for the graph the
per-operator profile that explains a miss. Writes the section bench:decode of bench/RESULTS.md and
bench/results/decode.json.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from common import REPO, md_table, parser, save_json, write_section
from modelmake.core.errors import ModelmakeError

CACHE = REPO / ".cache" / "decode"
EXPERIMENTS = {"smollm2": ["experiment=smollm2"], "tiny": []}


# --- bandwidth and bytes --------------------------------------------------------------------------
def bandwidth(nbytes: int, threads: int) -> tuple[float, str]:
    """Bytes/s a read of `nbytes` sustains with `threads` threads, and how it was measured: each
    thread sums its own slice of one array (bench/bandwidth.c: compiled here with -march=native,
    OpenMP threads bound to cores, 2 MiB pages, uint64 adds the compiler vectorizes, so it is bound
    by the memory system; best of 15 passes after a warm-up). The array is the size of what one
    token of that engine reads, so it lives where the engine's weights live between tokens (the
    L3 where they fit, DRAM where they do not): the floor no engine can beat here for those bytes.
    Without a C compiler, numpy's sum of float32 slices in threads (slower: about 17 GB/s at one
    thread here against 19, and it does not scale to 2 threads)."""
    import shutil
    import subprocess

    exe = CACHE / "bandwidth"
    if not exe.exists() and shutil.which("cc"):
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cc", "-O3", "-march=native", "-fopenmp", str(REPO / "bench" / "bandwidth.c"), "-o", str(exe)],
                       check=False, capture_output=True)
    if exe.exists():
        env = os.environ | {"OMP_PROC_BIND": "true"}
        r = subprocess.run([str(exe), str(int(nbytes)), str(threads), "15"], capture_output=True, text=True, env=env)
        if r.returncode == 0:
            return float(r.stdout.strip()), "bench/bandwidth.c"
    a = np.ones(max(nbytes // 4, threads * 1024), np.float32)
    parts = np.array_split(a, threads)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        def once() -> float:
            t0 = time.perf_counter()
            list(pool.map(np.sum, parts))
            return time.perf_counter() - t0

        once()
        best = min(once() for _ in range(7))
    return a.nbytes / best, "numpy sum (no C compiler)"


def _tensor_bytes(t) -> int:
    from onnx import helper

    for kv in t.external_data:
        if kv.key == "length":
            return int(kv.value)
    if t.raw_data:
        return len(t.raw_data)
    n = int(np.prod(t.dims)) if t.dims else 1
    return n * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize


def graph_bytes(model_dir: Path) -> dict:
    """Bytes of weights one decode step reads, from the graph's own initializers: every initializer
    a computing node reads, once; a table only a Gather reads (the token embedding) counts one row.
    LoRA inputs' empty defaults are 0 bytes."""
    import onnx

    model = onnx.load(Path(model_dir) / "model.onnx", load_external_data=False)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    readers: dict[str, set[str]] = {}
    for node in g.node:
        for name in node.input:
            if name in inits:
                readers.setdefault(name, set()).add(node.op_type)
    total, rows, head = 0, 0, {}
    for name, ops in readers.items():
        t = inits[name]
        size = _tensor_bytes(t)
        if ops <= {"Gather", "GatherBlockQuantized", "Transpose"}:
            rows += size // max(1, t.dims[0]) if t.dims else size
            continue
        total += size
        if "lm_head" in name:
            head[name] = [list(t.dims), onnx.TensorProto.DataType.Name(t.data_type), size]
    return {"bytes": total + rows, "lm_head": head}


def gguf_bytes(path: Path) -> dict:
    """Bytes one llama.cpp decode step reads from the GGUF: every tensor, the token embedding one
    row only when the file has its own output matrix (a tied model reads token_embd as its head)."""
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    names = {t.name: t for t in r.tensors}
    total = 0
    for name, t in names.items():
        if name == "token_embd.weight" and "output.weight" in names:
            total += int(t.n_bytes) // int(t.shape[-1])
        else:
            total += int(t.n_bytes)
    types = sorted({t.tensor_type.name for t in r.tensors})
    return {"bytes": total, "types": types}


def kv_bytes(cfg: dict, context: float, itemsize: int) -> float:
    """The KV cache one step reads at `context` positions (keys and values, every layer)."""
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    return 2 * cfg["num_hidden_layers"] * kv * head_dim * context * itemsize


def hf_bytes(model_dir: Path, adapter_dir: Path | None) -> int:
    """The fp32 dense model's weights (a tied head once), plus the LoRA adapter's."""
    from safetensors import safe_open

    total = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), "np") as st:
            for k in st.keys():
                if "embed_tokens" in k:
                    continue  # read one row a token, unless it is the (tied) head
                total += int(np.prod(st.get_slice(k).get_shape())) * 4
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    if cfg.get("tie_word_embeddings"):
        total += cfg["vocab_size"] * cfg["hidden_size"] * 4
    if adapter_dir is not None:
        with safe_open(str(Path(adapter_dir) / "adapter_model.safetensors"), "np") as st:
            total += sum(int(np.prod(st.get_slice(k).get_shape())) * 4 for k in st.keys())
    return total


# --- the graphs this bench builds ---------------------------------------------------------------------
def variant_graph(point: dict, head: str | None, accuracy: int | None = None) -> Path:
    """The builder's graph of the quantize artifact without LoRA inputs, with the export's settings
    (and `export.lm_head=head`, `export.accuracy_level=accuracy` where given), built once under
    .cache/decode/."""
    from omegaconf import OmegaConf

    from modelmake.models.builder import pin_producer_file, run_builder

    e = OmegaConf.create(point["export"].config["export"])
    name = "plain" if head is None else f"head-{head}"
    if head is not None:
        e.lm_head = head
    if accuracy is not None:
        e.accuracy_level = accuracy
        name += f"-acc{accuracy}"
    out = CACHE / point["export"].key / name
    if not (out / "model.onnx").exists():
        tmp = out.with_name(out.name + ".tmp")
        run_builder(point["quantize"].path / "model", tmp, e, CACHE / "builder-cache", CACHE / f"{name}.builder.log")
        pin_producer_file(tmp)
        tmp.rename(out)
    return out


# --- rows ----------------------------------------------------------------------------------------------
def ort_row(model_dir: Path, adapter: Path | None, ids, threads: int, args) -> dict:
    from modelmake.models.speed import measure

    return measure("ort", model_dir, adapter, ids, args.new_tokens, args.repeats, threads)


def profile_graph(model_dir: Path, adapter: Path | None, prompt: int, steps: int = 32) -> dict:
    """Where a decode step's time goes: onnxruntime's own profiler over `steps` one-token steps
    (one thread) after a prompt of `prompt` positions, per operator kind and for the LoRA branches,
    the lm_head and the int4 projections apart."""
    import onnxruntime as ort

    cfg = json.loads((Path(model_dir) / "genai_config.json").read_text())["model"]["decoder"]
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.log_severity_level = 3  # not the LoRA inputs' "initializer appears in graph inputs" warnings
    so.enable_profiling = True
    CACHE.mkdir(parents=True, exist_ok=True)
    so.profile_file_prefix = str(CACHE / "profile")
    sess = ort.InferenceSession(str(Path(model_dir) / "model.onnx"), so, providers=["CPUExecutionProvider"])
    ro = ort.RunOptions()
    if adapter is not None:
        lora = ort.LoraAdapter()
        lora.Load(str(adapter))
        ro.add_active_adapter(lora)
    layers, kv, hd = cfg["num_hidden_layers"], cfg["num_key_value_heads"], cfg["head_size"]
    feeds = {"input_ids": np.ones((1, prompt), np.int64), "attention_mask": np.ones((1, prompt), np.int64)}
    for i in range(layers):
        for k in ("key", "value"):
            feeds[f"past_key_values.{i}.{k}"] = np.zeros((1, kv, 0, hd), np.float32)
    names = [o.name for o in sess.get_outputs()]
    for _ in range(steps + 1):
        out = dict(zip(names, sess.run(None, feeds, ro)))
        total = feeds["attention_mask"].shape[1]
        feeds = {"input_ids": np.ones((1, 1), np.int64), "attention_mask": np.ones((1, total + 1), np.int64)}
        for i in range(layers):
            for k in ("key", "value"):
                feeds[f"past_key_values.{i}.{k}"] = out[f"present.{i}.{k}"]
    path = sess.end_profiling()
    events = json.loads(Path(path).read_text())
    Path(path).unlink()
    kinds: dict[str, float] = {}
    groups = {"LoRA branches": 0.0, "lm_head": 0.0, "int4 projections (MatMulNBits)": 0.0, "attention": 0.0}
    steps_seen = 0
    for ev in events:
        if ev.get("cat") == "Session" and ev.get("name") == "model_run":
            steps_seen += 1
        if ev.get("cat") != "Node" or not ev["name"].endswith("_kernel_time") or steps_seen <= 1:
            continue  # the prompt's run is not a decode step
        node, op, us = ev["name"][: -len("_kernel_time")], ev["args"].get("op_name", "?"), ev["dur"]
        kinds[op] = kinds.get(op, 0.0) + us
        if node.startswith("/lora/"):
            groups["LoRA branches"] += us
        elif "lm_head" in node:
            groups["lm_head"] += us
        elif op == "MatMulNBits":
            groups["int4 projections (MatMulNBits)"] += us
        elif op == "GroupQueryAttention":
            groups["attention"] += us
    per = max(1, steps)
    total = sum(kinds.values())
    return {"steps": steps, "ms_per_step_in_kernels": total / per / 1000,
            "kinds_ms": {k: v / per / 1000 for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "groups_ms": {k: v / per / 1000 for k, v in groups.items()}}


def head_quality(graphs: dict[str, Path], point: dict, records: int) -> dict:
    """Held-out perplexity of each graph and its mean per-token KL from the first (the fp32 head)."""
    from transformers import AutoTokenizer

    from modelmake.models.scoring import OrtSequence, mean_kl, perplexity_of
    from modelmake.stages.layout import read_split

    tok = AutoTokenizer.from_pretrained(point["quantize"].path / "model")
    texts = [r["text"] for r in read_split(point["dataset"].path, "eval")[:records]]
    seqs = [tok(t, add_special_tokens=False)["input_ids"][:128] for t in texts]
    logits = {}
    for name, d in graphs.items():
        step = OrtSequence(d)
        logits[name] = [step(ids) for ids in seqs]
    ref = next(iter(logits.values()))
    return {name: {"ppl": perplexity_of(lg, seqs), "kl_from_fp32_head": mean_kl(ref, lg)}
            for name, lg in logits.items()} | {"_records": len(seqs)}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--experiment", choices=sorted(EXPERIMENTS), help="default: smollm2 if built, else tiny")
    ap.add_argument("--threads", default="1,2", help="comma list (default 1,2)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quality-records", type=int, default=16, help="held-out records for the lm_head rows")
    ap.add_argument("--no-llama-build", action="store_true", help="do not build llama.cpp if it is missing")
    ap.add_argument("--dry", action="store_true", help="check arguments and what is built, then stop")
    args = ap.parse_args()
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        sys.exit(f"--threads {args.threads}: a comma list of whole numbers")
    cores = len(os.sched_getaffinity(0))
    too_many = [t for t in threads if t > cores or t < 1]
    if too_many:
        sys.exit(f"--threads {too_many[0]}: this machine gives this process {cores} core(s); a thread count above "
                 "them measures the scheduler, not the engine")

    from helpers.project import nodes

    exp = args.experiment or ("smollm2" if _built(nodes(REPO, *EXPERIMENTS["smollm2"])) else "tiny")
    ov = EXPERIMENTS[exp]
    point = nodes(REPO, *ov)
    merged_point = nodes(REPO, *ov, "export=int4_merged")
    missing = [s for s in ("quantize", "finetune", "export", "adapter") if not point[s].manifest.exists()]
    if missing:
        sys.exit(f"decode bench ({exp}): {', '.join(missing)} not built; build them first: "
                 f"modelmake build {' '.join(ov)}")
    if args.dry:
        print(f"decode bench: {exp}, threads {threads}, cores {cores}; merged built: "
              f"{merged_point['merged'].manifest.exists()}")
        return
    rows, raw = run_table(exp, point, merged_point, threads, args)
    save_json("decode", raw)
    write_section("decode", f"Decode cost per token ({exp})", render(exp, rows, raw, threads))


def _built(point: dict) -> bool:
    return all(point[s].manifest.exists() for s in ("quantize", "finetune", "export", "adapter"))


def run_table(exp, point, merged_point, threads, args):
    import llamacpp
    from transformers import AutoTokenizer

    from modelmake.models.sources import gguf_path
    from modelmake.stages.layout import ADAPTER_FILE, read_split

    CACHE.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(point["quantize"].path / "model")
    record = read_split(point["dataset"].path, "eval")[0]
    ids = tok(record["prompt"], add_special_tokens=False)["input_ids"]
    qcfg = json.loads((point["quantize"].path / "model" / "config.json").read_text())
    export_dir, adapter = point["export"].path / "model", point["adapter"].path / ADAPTER_FILE
    context = len(ids) + args.new_tokens / 2  # the mean context a decode step reads
    raw = {"experiment": exp, "prompt_tokens": len(ids), "new_tokens": args.new_tokens, "repeats": args.repeats,
           "threads": threads, "load_before": os.getloadavg()}
    engines = {}  # name -> (kind, how to run it at t threads, bytes per token)
    plain = variant_graph(point, None)
    kv32 = kv_bytes(qcfg, context, 4)
    engines["ONNX int4, no LoRA inputs"] = ("graph", lambda t: ort_row(plain, None, ids, t, args),
                                           graph_bytes(plain)["bytes"] + kv32)
    engines["multi-LoRA graph, no adapter"] = ("graph", lambda t: ort_row(export_dir, None, ids, t, args),
                                              graph_bytes(export_dir)["bytes"] + kv32)
    engines["multi-LoRA graph + adapter"] = ("graph", lambda t: ort_row(export_dir, adapter, ids, t, args),
                                            graph_bytes(export_dir)["bytes"] + adapter.stat().st_size + kv32)
    if merged_point["merged"].manifest.exists():
        from modelmake.stages.merged_layout import MERGED_ROUTES, merged_graph

        for route in MERGED_ROUTES:
            d = merged_graph(merged_point["merged"].path, route)
            engines[f"merged-{route.upper()} graph"] = ("graph", lambda t, d=d: ort_row(d, None, ids, t, args),
                                                        graph_bytes(d)["bytes"] + kv32)
    else:
        raw["merged"] = f"not built: modelmake build {' '.join([*EXPERIMENTS[exp], 'export=int4_merged'])}"
    heads = {}
    own = point["export"].config["export"].get("lm_head", "fp32")
    raw["export_lm_head"] = own
    for head in ("fp32", "int8", "int4"):
        try:
            heads[head] = plain if head == own else variant_graph(point, head)
        except ModelmakeError as e:
            raw[f"head_{head}"] = str(e)
            continue
        if head != own:
            d = heads[head]
            engines[f"no LoRA inputs, lm_head {head}"] = ("graph", lambda t, d=d: ort_row(d, None, ids, t, args),
                                                         graph_bytes(d)["bytes"] + kv32)
    acc = point["export"].config["export"]["accuracy_level"]
    if acc != 4:  # the builder's CPU default, int8 activations: faster, and not exact (docs/onnx-lora.md)
        fast = variant_graph(point, point["export"].config["export"].get("lm_head", "fp32"), 4)
        engines["ONNX int4, int8 activations (accuracy_level 4)"] = (
            "graph", lambda t: ort_row(fast, None, ids, t, args), graph_bytes(fast)["bytes"] + kv32)
    gguf = None
    if point["base"].config["model"]["kind"] == "gguf":
        from omegaconf import OmegaConf

        gguf = gguf_path(OmegaConf.create(point["base"].config["model"]))
    llama_reason = None
    if gguf is None:
        llama_reason = "no GGUF of this model (the tiny model is made here, not packaged)"
    else:
        try:
            if not args.no_llama_build:
                for variant in llamacpp.VARIANTS:
                    llamacpp.build(variant=variant)
        except llamacpp.LlamaCppUnavailable as e:
            llama_reason = str(e)
        engines["llama.cpp (packaged GGUF)"] = (
            "llama", lambda t: llamacpp.run(gguf, t, len(ids), args.new_tokens, args.repeats),
            gguf_bytes(gguf)["bytes"] + kv_bytes(qcfg, context, 2))
        engines["llama.cpp, no-AMX build"] = (
            "llama", lambda t: llamacpp.run(gguf, t, len(ids), args.new_tokens, args.repeats, variant="noamx"),
            gguf_bytes(gguf)["bytes"] + kv_bytes(qcfg, context, 2))
        raw["gguf"] = {"file": gguf.name} | gguf_bytes(gguf)
    dense = CACHE / point["quantize"].key / "dense"
    if not (dense / "config.json").exists():
        from modelmake.models.awq_fixes import dequantize_checkpoint

        dequantize_checkpoint(point["quantize"].path / "model", dense)
    ft_adapter = point["finetune"].path / "adapter"
    from modelmake.models.speed import measure

    engines["HF transformers fp32 eager + adapter"] = (
        "hf", lambda t: measure("hf", dense, ft_adapter, ids, args.new_tokens, args.repeats, t),
        hf_bytes(dense, ft_adapter) + kv32)

    raw["lm_head"] = graph_bytes(plain)["lm_head"]
    raw["bandwidth"] = {}
    rows = []
    for t in threads:
        measured = {}  # bytes a token reads (to 1 MB) -> bytes/s, measured once a size
        for name, (kind, fn, nbytes) in engines.items():
            size = int(round(nbytes / 1e6) * 1e6)
            if size not in measured:
                measured[size], method = bandwidth(size, t)
                raw["bandwidth"].setdefault(t, {})[size] = {"bytes_per_s": measured[size], "method": method}
            bw = measured[size]
            row = {"engine": name, "threads": t, "bytes_per_token": nbytes, "bandwidth": bw, "floor_s": nbytes / bw}
            if kind == "llama" and llama_reason:
                row["error"] = llama_reason
            else:
                try:
                    row |= fn(t)
                except (RuntimeError, llamacpp.LlamaCppUnavailable, ModelmakeError) as e:
                    row["error"] = str(e).strip().splitlines()[-1][:300]
            if "tokens_per_s" in row:
                row["floor_ratio"] = (1 / row["tokens_per_s"]) / row["floor_s"]
            rows.append(row)
            print(f"{t} thread(s)  {name:<40} " + (f"{row['tokens_per_s']:8.1f} tok/s  {row['floor_ratio']:.2f}x floor"
                                                    if "tokens_per_s" in row else row.get("error", "")),
                  file=sys.stderr, flush=True)
    if llama_reason and gguf is None:
        rows.append({"engine": "llama.cpp", "threads": "-", "error": llama_reason})
    raw["rows"] = rows
    raw["head_quality"] = head_quality(heads, point, args.quality_records) if "fp32" in heads else {}
    raw["profile"] = {"multi-LoRA graph + adapter": profile_graph(export_dir, adapter, len(ids)),
                      "multi-LoRA graph, no adapter": profile_graph(export_dir, None, len(ids)),
                      "ONNX int4, no LoRA inputs": profile_graph(plain, None, len(ids))}
    raw["load_after"] = os.getloadavg()
    return rows, raw


def _f(v, fmt="{:.1f}"):
    return "–" if v is None else fmt.format(v)


def render(exp, rows, raw, threads) -> str:
    table = md_table(
        ["engine", "threads", "tok/s", "TTFT ms", "MB a token reads", "floor ms", "x floor", "note"],
        [[r["engine"], r["threads"], _f(r.get("tokens_per_s")), _f(r.get("ttft_s") and 1000 * r["ttft_s"]),
          _f(r.get("bytes_per_token") and r["bytes_per_token"] / 1e6),
          _f(r.get("floor_s") and 1000 * r["floor_s"], "{:.2f}"),
          _f(r.get("floor_ratio"), "{:.2f}"), r.get("error", "")] for r in rows], "llrrrrrl")
    bw = "; ".join(f"{t} thread(s): " + ", ".join(f"{v['bytes_per_s'] / 1e9:.1f} GB/s at {size / 1e6:.0f} MB"
                                                  for size, v in sorted(per.items()))
                   for t, per in raw["bandwidth"].items())
    method = {v["method"] for per in raw["bandwidth"].values() for v in per.values()}
    lines = [f"Prompt: the first held-out record's prompt ({raw['prompt_tokens']} tokens), {raw['new_tokens']} new "
             f"tokens, median of {raw['repeats']} after a warm-up, greedy; each engine in its own process. Load "
             f"average before/after: {raw['load_before'][0]:.1f} / {raw['load_after'][0]:.1f} (2 cores shared with "
             "other work: absolute figures move with it, rows measured in one sitting compare).", "", table, "",
             f"Read bandwidth measured in this run ({', '.join(sorted(method))}: an array as large as each row's "
             f"bytes a token, each thread summing its slice, best of 15): {bw}. Floor = bytes a token reads / "
             "the bandwidth at that size; bytes "
             "counted from each graph's (or GGUF's, or safetensors') own tensors: every weight a computing node "
             "reads once, an embedding table only a Gather reads one row, the adapter's A and B when active, "
             "and the KV cache at the mean context (fp32 in onnxruntime, f16 in llama.cpp).", ""]
    if raw.get("merged"):
        lines += [f"Merged graphs: {raw['merged']}.", ""]
    hq = raw.get("head_quality", {})
    if hq:
        lines += [f"lm_head precision ({hq['_records']} held-out records, against the fp32-head graph; "
                  "lm_head weights: " + ", ".join(f"{k} {v[0]} {v[1]} {v[2] / 1e6:.0f} MB"
                                                   for k, v in raw["lm_head"].items()) + "):", "",
                  md_table(["lm_head", "perplexity", "KL from fp32 head"],
                           [[k, f"{v['ppl']:.4f}", f"{v['kl_from_fp32_head']:.4f}"] for k, v in hq.items()
                            if not k.startswith("_")], "lrr"), ""]
    lines += targets(rows, threads)
    prof = raw.get("profile", {})
    if prof:
        lines += ["", "Profile (onnxruntime's profiler, 1 thread, 32 one-token steps, ms per step in kernels):", "",
                  md_table(["graph", "in kernels", *next(iter(prof.values()))["groups_ms"], "top operators"],
                           [[name, f"{p['ms_per_step_in_kernels']:.2f}", *(f"{v:.2f}" for v in p["groups_ms"].values()),
                             ", ".join(f"{k} {v:.2f}" for k, v in list(p["kinds_ms"].items())[:4])]
                            for name, p in prof.items()], "lr" + "r" * 4 + "l")]
    return "\n".join(lines)


def targets(rows, threads) -> list[str]:
    def rate(engine, t):
        r = next((x for x in rows if x["engine"] == engine and x["threads"] == t), {})
        return r.get("tokens_per_s")

    out = ["Targets:", ""]
    for t in threads:
        plain, none, ad = (rate(e, t) for e in ("ONNX int4, no LoRA inputs", "multi-LoRA graph, no adapter",
                                                "multi-LoRA graph + adapter"))
        if plain and none:
            out.append(f"- {t} thread(s): multi-LoRA graph, no adapter, {100 * (none / plain - 1):+.1f} % against the "
                       f"graph without LoRA inputs (target: within 3 %): {'met' if none >= 0.97 * plain else 'missed'}")
        if plain and ad:
            out.append(f"- {t} thread(s): with the adapter {100 * (ad / plain - 1):+.1f} % (target: within 10 %): "
                       f"{'met' if ad >= 0.9 * plain else 'missed'}")
        graphs = [(r["tokens_per_s"], r["engine"]) for r in rows if r["threads"] == t and "tokens_per_s" in r
                  and not r["engine"].startswith(("llama", "HF"))]
        llama = rate("llama.cpp (packaged GGUF)", t)
        if graphs and llama:
            best = max(graphs)
            out.append(f"- {t} thread(s): fastest int4 graph ({best[1]}) {best[0]:.1f} tok/s vs llama.cpp {llama:.1f} "
                       f"({best[0] / llama:.2f}x; target: at least 1x): {'met' if best[0] >= llama else 'missed'}")
        ratios = [(r["floor_ratio"], r["engine"]) for r in rows if r["threads"] == t and "floor_ratio" in r
                  and not r["engine"].startswith(("llama", "HF"))]
        if ratios:
            best = min(ratios)
            out.append(f"- {t} thread(s): the graph closest to its floor ({best[1]}) at {best[0]:.2f}x "
                       f"(target: within 1.5x): {'met' if best[0] <= 1.5 else 'missed'}")
    return out


if __name__ == "__main__":
    main()
