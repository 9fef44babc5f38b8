"""The evaluate stage: is the int4 + LoRA model any good, and what did each step cost or buy?

On the held-out split, for one built configuration:
- perplexity of the fp32 base, a round-to-nearest int4 baseline (same group size), the AWQ model,
  AWQ + LoRA (torch), and the exported ONNX graph + adapter (onnxruntime-genai);
- ONNX-vs-PyTorch parity with the adapter active (max abs logit diff, top-1 agreement);
- for classification-style data (few distinct completions): label accuracy before and after
  fine-tuning, by scoring each label's log-likelihood after the prompt;
- decode tokens/s and time to first token, onnxruntime-genai vs transformers on the same
  weights, each in its own one-thread process (`speed`);
- sizes on disk of every artifact.
Writes metrics.json (a DVC metric) through the stage runner.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from modelmake.core.atomic import scratch_dir
from modelmake.core.manifest import dir_size
from modelmake.models.awq_fixes import dequantize_checkpoint, load_awq_model
from modelmake.models.awq_quantizer import rtn_quantize_
from modelmake.stages.layout import ADAPTER_FILE, model_location, read_split

log = logging.getLogger(__name__)


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


# --- the stage --------------------------------------------------------------------------------
def sizes(node) -> dict:
    n = node.inputs
    out = {f"{k}_artifact_bytes": dir_size(v.path) for k, v in n.items()}
    base_dir = Path(model_location(n["base"].path))
    if base_dir.is_dir():
        out["fp32_model_bytes"] = dir_size(base_dir)
    out["awq_model_bytes"] = dir_size(n["quantize"].path / "model")
    out["onnx_model_bytes"] = dir_size(n["export"].path / "model")
    out["onnx_adapter_bytes"] = (n["adapter"].path / ADAPTER_FILE).stat().st_size
    return out


def build(node, out: Path, cfg) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelmake.models.speed import measure

    torch.set_num_threads(cfg.threads)
    e = cfg.evaluate
    n = node.inputs
    qdir = n["quantize"].path / "model"
    onnx_dir, adapter_file = n["export"].path / "model", n["adapter"].path / ADAPTER_FILE
    tok = AutoTokenizer.from_pretrained(qdir)
    records = read_split(n["dataset"].path, "eval")[: e.max_records]
    seqs = [tok(r["text"], add_special_tokens=False)["input_ids"][: cfg.train.max_seq_len] for r in records]

    base_src = model_location(n["base"].path)
    fp32 = AutoModelForCausalLM.from_pretrained(base_src, dtype=torch.float32).eval()
    metrics = {"eval_records": len(records), "eval_tokens": sum(len(s) - 1 for s in seqs)}
    ref = [torch_logits(fp32, ids) for ids in seqs]
    metrics["ppl_fp32"] = perplexity_of(ref, seqs)
    rtn_quantize_(fp32, cfg.quantize.w_bit, cfg.quantize.group_size, cfg.quantize.zero_point)
    rtn = [torch_logits(fp32, ids) for ids in seqs]
    metrics["ppl_rtn_int4"], metrics["kl_rtn_int4"] = perplexity_of(rtn, seqs), mean_kl(ref, rtn)
    del fp32, rtn

    awq = load_awq_model(qdir, dtype=torch.float32)
    awq_logits = [torch_logits(awq, ids) for ids in seqs]
    metrics["ppl_awq_int4"], metrics["kl_awq_int4"] = perplexity_of(awq_logits, seqs), mean_kl(ref, awq_logits)
    train_records = read_split(n["dataset"].path, "train")
    labels = label_set(train_records + records, e.max_labels) if e.task != "lm" else None
    if labels:
        metrics["accuracy_before"] = label_accuracy(awq, tok, records, labels)
    lora = PeftModel.from_pretrained(awq, n["finetune"].path / "adapter").eval()
    torch_fn = lambda ids: torch_logits(lora, ids)  # noqa: E731
    metrics["ppl_awq_lora"] = perplexity(torch_fn, seqs)
    if labels:
        metrics["accuracy_after"] = label_accuracy(lora, tok, records, labels)
        metrics["labels"] = len(labels)
        prior = Counter(r["completion"] for r in train_records).most_common(1)[0][0]
        # the floor to beat: always answering the training split's most common label
        metrics["accuracy_majority"] = sum(r["completion"] == prior for r in records) / len(records)

    onnx_fn = OrtStepper(onnx_dir, adapter_file)
    metrics["ppl_onnx_lora"] = perplexity(onnx_fn, seqs)
    metrics |= {f"parity_{k}": v for k, v in parity(onnx_fn, torch_fn, seqs[: e.parity_records]).items()}

    if e.speed.enabled:
        ids = tok(records[0]["prompt"], add_special_tokens=False)["input_ids"]
        ort = measure("ort", onnx_dir, adapter_file, ids, e.speed.new_tokens, e.speed.repeats)
        with scratch_dir("evaluate") as scratch:
            dense = scratch / "dense"
            dequantize_checkpoint(qdir, dense)  # the same weights as the int4 graph, dense fp32
            hf = measure("hf", dense, n["finetune"].path / "adapter", ids, e.speed.new_tokens, e.speed.repeats)
        metrics["measured"] = {"ort_int4_tokens_per_s": ort["tokens_per_s"], "ort_int4_ttft_s": ort["ttft_s"],
                    "ort_int4_setup_s": ort["setup_s"], "hf_fp32_tokens_per_s": hf["tokens_per_s"],
                    "hf_fp32_ttft_s": hf["ttft_s"],
                    "speedup_ort_vs_hf": ort["tokens_per_s"] / hf["tokens_per_s"]}
    metrics |= sizes(node)
    return metrics
