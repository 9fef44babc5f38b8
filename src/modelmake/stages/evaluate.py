"""The evaluate stage: is the int4 + LoRA model any good, and what did each step cost or buy?

On the held-out split, for one built configuration (the base's numbers, fp32 / RTN / AWQ, come from
the quality stage, once per quantized model):
- perplexity of AWQ + LoRA (torch) and of the exported ONNX graph + adapter (onnxruntime-genai);
- ONNX-vs-PyTorch parity with the adapter active (max abs logit diff, top-1 agreement);
- for classification-style data (few distinct completions): label accuracy before and after
  fine-tuning, by scoring each label's log-likelihood after the prompt;
- decode tokens/s and time to first token, onnxruntime-genai vs transformers on the same
  weights, each in its own one-thread process (`speed`);
- sizes on disk of the graph and the adapter;
- with export=int4_merged, the merged graphs of both routes (merged-RTN, merged-AWQ) beside the
  multi-LoRA graph + adapter: held-out perplexity, mean per-token KL from fp32+LoRA (torch, the
  adapter on the unquantized base) and from AWQ+LoRA (torch, what was trained), the merged-AWQ
  graph's parity against torch on its own int4 checkpoint, and decode speed of each.
Writes metrics.json (a DVC metric) through the stage runner.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

from modelmake.core.atomic import scratch_dir
from modelmake.core.manifest import dir_size
from modelmake.models.awq_fixes import dequantize_checkpoint, load_awq_model
from modelmake.models.scoring import (
    OrtSequence,
    OrtStepper,
    label_accuracy,
    label_set,
    mean_kl,
    parity,
    perplexity_of,
    torch_logits,
)
from modelmake.stages.layout import ADAPTER_FILE, MODEL_DIR, model_location, model_revision, read_split
from modelmake.stages.merged_layout import MERGED_ROUTES, merged_graph
from modelmake.stages.quality import eval_sequences

# the deployed graphs the merged comparison scores: the multi-LoRA graph + adapter, each merged route
GRAPHS = ("onnx_lora", *(f"merged_{r}" for r in MERGED_ROUTES))


def sizes(node) -> dict:
    n = node.inputs
    return {"onnx_model_bytes": dir_size(n["export"].path / MODEL_DIR),
            "onnx_adapter_bytes": (n["adapter"].path / ADAPTER_FILE).stat().st_size}


def build(node, out: Path, cfg) -> dict:
    from peft import PeftModel
    from transformers import AutoTokenizer

    from modelmake.models.speed import measure

    torch.set_num_threads(cfg.threads)
    e, n = cfg.evaluate, node.inputs
    qdir = n["quantize"].path / MODEL_DIR
    onnx_dir, adapter_file = n["export"].path / MODEL_DIR, n["adapter"].path / ADAPTER_FILE
    tok = AutoTokenizer.from_pretrained(qdir)
    records, seqs = eval_sequences(tok, n["dataset"].path, e)
    # what quantization cost comes from the quality stage, computed once for every adapter on this base
    metrics = json.loads((n["quality"].path / "metrics.json").read_text())
    awq = load_awq_model(qdir, dtype=torch.float32)
    lora = PeftModel.from_pretrained(awq, n["finetune"].path / "adapter").eval()
    torch_fn = lambda ids: torch_logits(lora, ids)  # noqa: E731
    awq_lora = [torch_fn(ids) for ids in seqs]
    metrics["ppl_awq_lora"] = perplexity_of(awq_lora, seqs)
    train_records = read_split(n["dataset"].path, "train")
    labels = label_set(train_records + records, e.max_labels) if e.task != "lm" else None
    if labels:
        metrics["accuracy_after"] = label_accuracy(lora, tok, records, labels)
        metrics["labels"] = len(labels)
        prior = Counter(r["completion"] for r in train_records).most_common(1)[0][0]
        # the floor to beat: always answering the training split's most common label
        metrics["accuracy_majority"] = sum(r["completion"] == prior for r in records) / len(records)

    # the graph + adapter over every record in one forward pass each (plain onnxruntime); the
    # decoding path (onnxruntime-genai, one token a call, its KV cache) against torch on a few
    score = OrtSequence(onnx_dir, adapter_file, cfg.threads)
    onnx_logits = [score(ids) for ids in seqs]
    metrics["ppl_onnx_lora"] = perplexity_of(onnx_logits, seqs)
    onnx_fn = OrtStepper(onnx_dir, adapter_file)
    metrics |= {f"parity_{k}": v for k, v in parity(onnx_fn, torch_fn, seqs[: e.parity_records]).items()}
    merged_dir = n["merged"].path if "merged" in n else None
    if merged_dir is not None:
        del lora, awq
        metrics |= compare_merged(n, merged_dir, seqs, awq_lora, onnx_logits, e.parity_records, cfg.threads)

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
        if merged_dir is not None:
            for route in MERGED_ROUTES:
                r = measure("ort", merged_graph(merged_dir, route), None, ids, e.speed.new_tokens, e.speed.repeats)
                metrics["measured"] |= {f"merged_{route}_tokens_per_s": r["tokens_per_s"],
                                        f"merged_{route}_ttft_s": r["ttft_s"]}
    return metrics | sizes(node)


def compare_merged(n, merged_dir: Path, seqs, awq_lora, onnx_lora, parity_records: int, threads: int) -> dict:
    """The deployed graphs against what the adapter was meant to compute: perplexity, KL from
    fp32+LoRA and from AWQ+LoRA (torch) of the multi-LoRA graph + adapter and of both merged graphs,
    and the merged-AWQ graph's parity with torch running its own int4 checkpoint."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    fp32 = AutoModelForCausalLM.from_pretrained(model_location(n["base"].path), revision=model_revision(n["base"].path),
                                                dtype=torch.float32).eval()
    fp32_lora = PeftModel.from_pretrained(fp32, n["finetune"].path / "adapter").eval()
    ref = [torch_logits(fp32_lora, ids) for ids in seqs]
    del fp32_lora, fp32
    out = {"ppl_fp32_lora": perplexity_of(ref, seqs), "kl_fp32lora_awq_lora": mean_kl(ref, awq_lora)}
    # every deployed graph scored the same way: one forward pass a record (plain onnxruntime)
    logits = {"onnx_lora": onnx_lora}
    for route in MERGED_ROUTES:
        score = OrtSequence(merged_graph(merged_dir, route), None, threads)
        logits[f"merged_{route}"] = [score(ids) for ids in seqs]
    # the merged-AWQ graph decoding token by token against torch on the same merged int4 weights
    ckpt = load_awq_model(merged_dir / "awq" / "checkpoint", dtype=torch.float32)
    p = parity(OrtStepper(merged_graph(merged_dir, "awq")), lambda ids: torch_logits(ckpt, ids),
               seqs[:parity_records])
    out |= {f"merged_awq_parity_{k}": v for k, v in p.items()}
    for name in GRAPHS:
        if name != "onnx_lora":  # build() scored that graph already: one ppl_onnx_lora
            out[f"ppl_{name}"] = perplexity_of(logits[name], seqs)
        out[f"kl_fp32lora_{name}"] = mean_kl(ref, logits[name])
        out[f"kl_awqlora_{name}"] = mean_kl(awq_lora, logits[name])
    return out
