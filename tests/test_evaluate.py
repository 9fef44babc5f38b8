"""The evaluate stage's numbers are real numbers, and the report shows a sweep."""

import json

import numpy as np
import pytest

from helpers.project import SHARED_DATA, build, nodes
from modelmake.core.journal import latest
from modelmake.models.scoring import OrtStepper, parity, perplexity, torch_logits
from modelmake.recipe import build_plan
from modelmake.stages.layout import ADAPTER_FILE


def metrics(node):
    return json.loads((node.path / "metrics.json").read_text())


def lora_torch(point):
    from peft import PeftModel
    from transformers import AutoTokenizer

    from modelmake.models.awq_fixes import load_awq_model

    qdir = point["quantize"].path / "model"
    model = PeftModel.from_pretrained(load_awq_model(qdir), point["finetune"].path / "adapter").eval()
    return model, AutoTokenizer.from_pretrained(qdir)


def sequences(point, tok, split="eval", n=6):
    from modelmake.stages.layout import read_split
    return [tok(r["text"], add_special_tokens=False)["input_ids"] for r in read_split(point["dataset"].path, split)[:n]]


def test_default_build_metrics_are_consistent(project):
    m = metrics(nodes(project)["evaluate"])
    assert abs(m["ppl_onnx_lora"] - m["ppl_awq_lora"]) / m["ppl_awq_lora"] < 5e-3  # ONNX computes what torch does
    assert m["ppl_awq_lora"] < 0.8 * m["ppl_awq_int4"]  # the fine-tune bought something
    assert m["ppl_fp32"] < m["ppl_awq_int4"] < 1.05 * m["ppl_fp32"]  # int4 costs a little
    assert m["parity_top1_agreement"] >= 0.99 and m["parity_max_abs_logit_diff"] < 0.3  # int8 activations
    # decode speed is the machine's, not the artifact's: the build journal holds it, the manifest not
    assert "measured" not in m
    speed = latest("evaluate", nodes(project)["evaluate"].key, project)["measured"]
    assert speed["ort_int4_tokens_per_s"] > speed["hf_fp32_tokens_per_s"] > 0
    assert m["awq_model_bytes"] < 0.5 * m["fp32_model_bytes"] and m["onnx_adapter_bytes"] < m["onnx_model_bytes"]


def test_perplexity_is_lower_on_real_text_than_on_shuffled_tokens(project):
    point = nodes(project)
    model, tok = lora_torch(point)
    seqs = sequences(point, tok, "train")
    rng = np.random.default_rng(0)
    shuffled = [[s[0]] + list(rng.permutation(s[1:])) for s in seqs]
    fn = lambda ids: torch_logits(model, ids)  # noqa: E731
    assert 5 * perplexity(fn, seqs) < perplexity(fn, shuffled)


def test_parity_is_small_with_the_right_adapter_and_large_with_the_wrong_one(project, second):
    point = nodes(project)
    model, tok = lora_torch(point)
    seqs = sequences(point, tok, n=3)
    torch_fn = lambda ids: torch_logits(model, ids)  # noqa: E731
    onnx = point["export"].path / "model"
    right = parity(OrtStepper(onnx, point["adapter"].path / ADAPTER_FILE), torch_fn, seqs)
    wrong = parity(OrtStepper(onnx, second["adapter"].path / ADAPTER_FILE), torch_fn, seqs)
    none = parity(OrtStepper(onnx), torch_fn, seqs)
    assert right["max_abs_logit_diff"] < 0.3 and right["top1_agreement"] >= 0.99
    # another adapter, or none, is an order of magnitude further off than the graph's own error
    assert min(wrong["max_abs_logit_diff"], none["max_abs_logit_diff"]) > 10 * right["max_abs_logit_diff"], \
        (right, wrong, none)
    assert wrong["top1_agreement"] < 1.0


def test_sweep_builds_one_quantize_and_export_and_reports_every_point(project):
    sweep = ["lora.r=2,16", "evaluate.speed.enabled=false"]  # test_search's space: its points are these
    build(project, *sweep)
    plan = build_plan(overrides=sweep)
    report = project / plan.report.path
    md = (report / "report.md").read_text()
    assert "lora.r=2" in md and "lora.r=16" in md
    assert "quantize: 1 artifact(s) for 2 point(s)" in md and "export: 1 artifact(s) for 2 point(s)" in md
    assert "finetune: 2 artifact(s) for 2 point(s)" in md
    for png in ("losses.png", "perplexity.png", "tradeoff.png"):
        data = (report / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert "<table>" in (report / "report.html").read_text()
    best = json.loads((report / "metrics.json").read_text())
    values = {p["label"]: p["metrics"]["ppl_onnx_lora"] for p in json.loads((report / "points.json").read_text())}
    assert best["best"] == min(values, key=values.get)


@pytest.mark.skipif(not (SHARED_DATA / "dataset-classification.jsonl").exists(), reason="../shared/data not present")
def test_classification_accuracy_before_and_after_fine_tuning(project):
    ov = ["experiment=tone_shared", f"data.path={SHARED_DATA / 'dataset-classification.jsonl'}",
          "evaluate.speed.enabled=false"]
    build(project, *ov, until="evaluate")
    m = metrics(nodes(project, *ov)["evaluate"])
    assert m["labels"] == 4
    assert m["accuracy_after"] > m["accuracy_before"]
    assert m["accuracy_after"] > m["accuracy_majority"] + 0.2  # more than the label prior (measured 0.67 vs 0.25)
    assert 0.1 < m["accuracy_majority"] < 0.6  # the training split's most common label (joy) on eval records


def test_on_the_outlier_model_awq_stays_closer_to_fp32_than_rtn(project):
    ov = ["model=tiny_phi3_outliers", "train.steps=10", "evaluate.speed.enabled=false"]  # quantization, not LoRA
    build(project, *ov, until="evaluate")
    m = metrics(nodes(project, *ov)["evaluate"])
    assert m["kl_awq_int4"] * 5 < m["kl_rtn_int4"]
    assert abs(m["ppl_awq_int4"] - m["ppl_fp32"]) < abs(m["ppl_rtn_int4"] - m["ppl_fp32"])
    normal = metrics(nodes(project)["evaluate"])
    assert normal["ppl_fp32"] == pytest.approx(m["ppl_fp32"], rel=1e-4)  # the outliers preserve the function


def test_report_labels_and_tables_are_well_formed():
    from modelmake.stages.report import point_labels

    assert point_labels([("threads=1",)]) == ["default"]
    assert point_labels([("lora.r=4", "threads=1"), ("lora.r=8", "threads=1")]) == ["lora.r=4", "lora.r=8"]
