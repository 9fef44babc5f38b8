"""How a model is scored: next-token logits, perplexity, KL from a reference, ONNX-vs-PyTorch parity,
label accuracy for classification-style data. Used by the quality and evaluate stages."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch


# --- perplexity -------------------------------------------------------------------------------
@torch.no_grad()
def torch_logits(model, ids: list[int]) -> np.ndarray:
    """Next-token logits at every position but the last: [len(ids) - 1, vocab]."""
    return model(torch.tensor([ids])).logits[0, :-1].float().numpy()


def nll(logits: np.ndarray, ids: list[int]) -> tuple[float, int]:
    """Summed negative log-likelihood of ids[1:] under `logits` (one row per position)."""
    logp = log_softmax(logits)
    targets = np.asarray(ids[1:])
    return float(-logp[np.arange(len(targets)), targets].sum()), len(targets)


def perplexity(logit_fn, seqs: list[list[int]]) -> float:
    return perplexity_of([logit_fn(ids) for ids in seqs], seqs)


def perplexity_of(logits: list[np.ndarray], seqs: list[list[int]]) -> float:
    total, count = 0.0, 0
    for lg, ids in zip(logits, seqs):
        s, n = nll(lg, ids)
        total, count = total + s, count + n
    return math.exp(total / count)


def log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def mean_kl(ref: list[np.ndarray], other: list[np.ndarray]) -> float:
    """Mean per-token KL(ref || other): how far a quantized model's predictions moved from fp32.
    On a tiny, overfit model held-out perplexity is too noisy to rank quantizers; this is not."""
    total, count = 0.0, 0
    for a, b in zip(ref, other):
        p, q = log_softmax(a.astype(np.float64)), log_softmax(b.astype(np.float64))
        total += float((np.exp(p) * (p - q)).sum())
        count += len(a)
    return total / count


class OrtStepper:
    """Next-token logits from an onnxruntime-genai graph, one token at a time (the API returns
    only the last position), with an adapter active or not."""

    def __init__(self, model_dir: Path, adapter: Path | None = None):
        import onnxruntime_genai as og

        self.og = og
        self.model = og.Model(str(model_dir))
        self.adapters = None
        if adapter is not None:
            self.adapters = og.Adapters(self.model)
            self.adapters.load(str(adapter), "a")

    def __call__(self, ids: list[int]) -> np.ndarray:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(ids) + 1)
        gen = self.og.Generator(self.model, params)
        if self.adapters is not None:
            gen.set_active_adapter(self.adapters, "a")
        rows = []
        for t in ids[:-1]:
            gen.append_tokens([t])
            rows.append(np.asarray(gen.get_logits())[0, -1].copy())
        return np.stack(rows)


class OrtSequence:
    """Next-token logits of a whole sequence from an onnxruntime-genai graph in one forward pass
    (plain onnxruntime, an empty KV cache), with an adapter active or not: what OrtStepper gives,
    a prompt's worth of positions at a time (on SmolLM2, ~10x faster than one token a call)."""

    def __init__(self, model_dir: Path, adapter: Path | None = None, threads: int = 1):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.log_severity_level = 3  # not the LoRA inputs' "initializer appears in graph inputs" warnings
        decoder = json.loads((Path(model_dir) / "genai_config.json").read_text())["model"]["decoder"]
        # the execution provider the graph was exported for, where this machine has it (a CUDA
        # export's ops also run on the CPU, which is where it is scored on a machine without one)
        wanted = [name for p in decoder.get("session_options", {}).get("provider_options", []) for name in p]
        providers = ["CPUExecutionProvider"]
        if "cuda" in wanted and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(Path(model_dir) / "model.onnx"), so, providers=providers)
        self.run_options = ort.RunOptions()
        if adapter is not None:
            self.adapter = ort.LoraAdapter()
            self.adapter.Load(str(adapter))
            self.run_options.add_active_adapter(self.adapter)
        self.past = {}
        for i in self.session.get_inputs():
            if i.name.startswith("past_key_values."):
                dtype = np.float16 if "float16" in i.type else np.float32
                self.past[i.name] = np.zeros((1, decoder["num_key_value_heads"], 0, decoder["head_size"]), dtype)

    def __call__(self, ids: list[int]) -> np.ndarray:
        x = np.asarray([ids], np.int64)
        feeds = {"input_ids": x, "attention_mask": np.ones_like(x), **self.past}
        logits = self.session.run(["logits"], feeds, self.run_options)[0]
        return logits[0, :-1].astype(np.float32)


def parity(a_fn, b_fn, seqs) -> dict:
    worst, agree, total = 0.0, 0, 0
    for ids in seqs:
        a, b = a_fn(ids), b_fn(ids)
        worst = max(worst, float(np.abs(a - b).max()))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += len(a)
    return {"max_abs_logit_diff": worst, "top1_agreement": agree / total}


# --- classification ---------------------------------------------------------------------------
def label_set(records: list[dict], max_labels: int) -> list[str] | None:
    labels = sorted({r["completion"] for r in records})
    return labels if 2 <= len(labels) <= max_labels else None


@torch.no_grad()
def label_accuracy(model, tok, records: list[dict], labels: list[str]) -> float:
    """Share of records whose gold completion scores highest among all labels after the prompt."""
    label_ids = [tok(label, add_special_tokens=False)["input_ids"] for label in labels]
    correct = 0
    for r in records:
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        scores = []
        for ids in label_ids:
            logits = torch_logits(model, p + ids)[len(p) - 1:]
            scores.append(-nll(logits, [p[-1]] + ids)[0])
        correct += labels[int(np.argmax(scores))] == r["completion"]
    return correct / len(records)


def bootstrap_ppl_difference(a: list[np.ndarray], b: list[np.ndarray], seqs: list[list[int]],
                             resamples: int = 2000, seed: int = 0) -> list[float]:
    """A 95 % interval of perplexity(b) - perplexity(a) over the records, by resampling them with
    replacement: whether a difference measured on this split is larger than the split can tell."""
    rows = [(nll(x, ids), nll(y, ids)) for x, y, ids in zip(a, b, seqs)]
    sa = np.array([r[0][0] for r in rows])
    sb = np.array([r[1][0] for r in rows])
    n = np.array([r[0][1] for r in rows])
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(rows), size=(resamples, len(rows)))
    counts = n[pick].sum(1)
    diff = np.exp(sb[pick].sum(1) / counts) - np.exp(sa[pick].sum(1) / counts)
    return [float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))]
