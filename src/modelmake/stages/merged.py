"""The merged stage (export=int4_merged): the fine-tune's adapter merged into the weights, one
int4 graph per route with no LoRA inputs, what a single-adapter deployment ships.

Two routes, both built (evaluate compares them with the multi-LoRA graph + adapter):
- `rtn/model`: Olive's (MergeAdapterWeights, then ModelBuilder int4): the adapter merged into the
  dequantized AWQ weights it was trained on, then round-to-nearest int4 by the builder, at the
  quantize config's group size and zero point. What AWQ bought is lost in the re-quantization.
- `awq/model`: the adapter merged into the fp32 base, then AWQ run again on the merged weights
  (this project's quantizer, the same calibration texts and settings as the quantize stage), and
  the builder reads that checkpoint (`awq/checkpoint`, kept: torch runs the same int4 weights).
Keyed by the base, the data, the quantization, the fine-tune and the export settings other than
the LoRA inputs, so a LoRA-only change rebuilds this and never the multi-LoRA graph.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from modelmake.core.atomic import scratch_dir
from modelmake.core.manifest import dir_size
from modelmake.models.builder import pin_producer_file, run_builder, smoke_test
from modelmake.models.merge import check_adapter, merge_into
from modelmake.stages.layout import MODEL_DIR, model_location, model_revision
from modelmake.stages.merged_layout import MERGED_ROUTES as ROUTES
from modelmake.stages.merged_layout import merged_graph as graph_dir
from modelmake.stages.quantize import calibration_texts, quantize

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint"  # awq/: the AWQ checkpoint of the merged weights the graph was built from


def rtn_options(q) -> tuple[str, ...]:
    """The builder's round-to-nearest at the AWQ checkpoint's format: same group size, asymmetric
    (uint4 with zero points) where AWQ keeps a zero point. The builder's own defaults (block 32,
    symmetric) would change two things at once against the AWQ route. Both routes get them: the
    builder applies them to the quantized LM head too (export.lm_head int8/int4), so the heads
    match and the routes differ only in how the body was quantized."""
    return (f"block_size={q.group_size}", f"is_symmetric={'false' if q.zero_point else 'true'}")


def build(node, out: Path, cfg) -> dict:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    n, e, q = node.inputs, cfg.export, cfg.quantize
    adapter = n["finetune"].path / "adapter"
    qdir = n["quantize"].path / MODEL_DIR
    config = json.loads((qdir / "config.json").read_text())
    fit = check_adapter(adapter, config)  # before any work: rank and targets against the base
    base_src = model_location(n["base"].path)
    revision = model_revision(n["base"].path)
    logs = Path("logs") / "merged"
    metrics: dict = {"adapter_rank": fit["rank"], "adapter_targets": fit["targets"],
                     "merged_modules": fit["modules"], "routes": list(ROUTES)}
    with scratch_dir("merged") as scratch:
        # Olive's route: merge into the dequantized AWQ weights, round-to-nearest int4
        from modelmake.models.awq_fixes import dequantize_checkpoint

        dequantize_checkpoint(qdir, scratch / "dequantized")
        merge_into(scratch / "dequantized", adapter, scratch / "rtn_merged")
        run_builder(scratch / "rtn_merged", graph_dir(out, "rtn"), e, scratch / "cache",
                    logs / f"{node.key}.rtn.builder.log", rtn_options(q))
        # modelmake's: merge into the fp32 base, AWQ again on the merged weights, same calibration
        merge_into(base_src, adapter, scratch / "fp32_merged", revision)
        texts = calibration_texts(n["dataset"].path, q.calib_samples)
        run = quantize(str(scratch / "fp32_merged"), out / "awq" / CHECKPOINT, q, texts,
                       bool(cfg.model.trust_remote_code))
        run_builder(out / "awq" / CHECKPOINT, graph_dir(out, "awq"), e, scratch / "cache",
                    logs / f"{node.key}.awq.builder.log", rtn_options(q))
    for route in ROUTES:
        pin_producer_file(graph_dir(out, route))
        metrics[f"{route}_model_bytes"] = dir_size(graph_dir(out, route))
        if e.execution_provider == "cpu":
            metrics[f"{route}_smoke_max_abs_logit"] = smoke_test(graph_dir(out, route))
    metrics["calibration_samples"] = len(texts)
    metrics["awq_search_gflop"] = run["search_gflop_scale"] + run["search_gflop_clip"]
    metrics["measured"] = {"awq_search_seconds": run["search_seconds"]}
    return metrics
