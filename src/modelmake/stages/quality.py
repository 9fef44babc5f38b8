"""The quality stage: what quantization cost, measured once per quantized model, not per adapter.

On the held-out split: perplexity of the fp32 base, of a round-to-nearest int4 baseline (same
group size) and of the AWQ model, with each one's mean per-token KL from fp32; label accuracy
before fine-tuning for classification-style data; the models' sizes. Keyed by the base, the data
and the quantization, so a sweep of LoRA settings computes it once and a LoRA-only change on a
fresh clone with a shared cache neither recomputes it nor pulls the base for it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from modelmake.core.manifest import dir_size
from modelmake.models.awq_fixes import load_awq_model
from modelmake.models.awq_quantizer import rtn_quantize_
from modelmake.models.scoring import (
    bootstrap_ppl_difference,
    label_accuracy,
    label_set,
    mean_kl,
    perplexity_of,
    torch_logits,
)
from modelmake.stages.layout import MODEL_DIR, model_location, model_revision, read_split


def eval_sequences(tok, dataset_dir: Path, e) -> tuple[list[dict], list[list[int]]]:
    """The held-out records scored (evaluate.max_records) and their token ids (evaluate.max_seq_len)."""
    records = read_split(dataset_dir, "eval")[: e.max_records]
    return records, [tok(r["text"], add_special_tokens=False)["input_ids"][: e.max_seq_len] for r in records]


def build(node, out: Path, cfg) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(cfg.threads)
    e, n, q = cfg.evaluate, node.inputs, cfg.quantize
    qdir = n["quantize"].path / MODEL_DIR
    tok = AutoTokenizer.from_pretrained(qdir)
    records, seqs = eval_sequences(tok, n["dataset"].path, e)
    base_src = model_location(n["base"].path)
    fp32 = AutoModelForCausalLM.from_pretrained(base_src, revision=model_revision(n["base"].path),
                                                dtype=torch.float32).eval()
    metrics = {"eval_records": len(records), "eval_tokens": sum(len(s) - 1 for s in seqs)}
    ref = [torch_logits(fp32, ids) for ids in seqs]
    metrics["ppl_fp32"] = perplexity_of(ref, seqs)
    rtn_quantize_(fp32, q.w_bit, q.group_size, q.zero_point)
    rtn = [torch_logits(fp32, ids) for ids in seqs]
    metrics["ppl_rtn_int4"], metrics["kl_rtn_int4"] = perplexity_of(rtn, seqs), mean_kl(ref, rtn)
    del fp32
    awq = load_awq_model(qdir, dtype=torch.float32)
    awq_logits = [torch_logits(awq, ids) for ids in seqs]
    metrics["ppl_awq_int4"], metrics["kl_awq_int4"] = perplexity_of(awq_logits, seqs), mean_kl(ref, awq_logits)
    metrics["ppl_awq_minus_rtn_ci95"] = bootstrap_ppl_difference(rtn, awq_logits, seqs)
    labels = label_set(read_split(n["dataset"].path, "train") + records, e.max_labels) if e.task != "lm" else None
    if labels:
        metrics["accuracy_before"] = label_accuracy(awq, tok, records, labels)
    if Path(base_src).is_dir():
        metrics["fp32_model_bytes"] = dir_size(Path(base_src))
    metrics["awq_model_bytes"] = dir_size(qdir)
    return metrics
