"""The merged export (export=int4_merged): the adapter merged into the weights, one int4 graph with
no LoRA inputs per route. Keys (a LoRA-only change rebuilds it, never the multi-LoRA graph), the
chain that deploys it (generate and register read it, not the adapter file), refusals, and the
merged-AWQ graph computing what torch computes on the same merged, re-quantized weights."""

from __future__ import annotations

import dataclasses
import functools
import json

import numpy as np
import pytest

from modelmake.core.errors import ModelmakeError
from modelmake.graph.nodes import Recipe
from modelmake.models.merge import check_adapter
from modelmake.recipe import RECIPE, build_plan

MERGED = "export=int4_merged"


@functools.cache  # a plan is read, never changed, here
def point(*overrides):
    return build_plan(overrides=list(overrides)).finals[0]


# --- keys and the chain ---------------------------------------------------------------------------
def test_the_merged_stage_is_in_the_graph_only_when_asked():
    assert "merged" not in point()
    p = point(MERGED)
    assert set(p["merged"].inputs) == {"base", "dataset", "quantize", "finetune"}


def test_the_merged_export_reuses_the_multi_lora_graph_of_the_plain_export():
    plain, merged = point(), point(MERGED)
    assert merged["export"].key == plain["export"].key
    assert merged["adapter"].key == plain["adapter"].key


@pytest.mark.parametrize("change", ["lora.r=12", "train.lr=3e-4", "lora.alpha=32"])
def test_a_lora_only_change_rebuilds_the_merged_graph_never_the_multi_lora_graph(change):
    before, after = point(MERGED), point(MERGED, change)
    moved = {s for s in before if before[s].key != after[s].key}
    assert moved == {"finetune", "adapter", "merged", "generate", "evaluate", "register"}


def test_a_quantize_change_rebuilds_the_merged_graph_too():
    before, after = point(MERGED), point(MERGED, "quantize.apply_clip=false")
    assert before["merged"].key != after["merged"].key


def test_generate_and_register_deploy_the_merged_graph_without_the_adapter_file():
    p = point(MERGED)
    assert set(p["generate"].inputs) == {"dataset", "export", "merged"}  # export: the base model's answer
    assert set(p["register"].inputs) == {"merged", "generate"}
    assert {"base", "merged", "adapter", "export"} <= set(p["evaluate"].inputs)  # compares the routes
    plain = point()
    assert set(plain["generate"].inputs) == {"dataset", "export", "adapter"}
    assert set(plain["register"].inputs) == {"export", "adapter", "generate"}


def test_the_route_deployed_moves_generate_and_register_not_the_merged_graph():
    awq, rtn = point(MERGED), point(MERGED, "export.merge=rtn")
    assert awq["merged"].key == rtn["merged"].key  # both routes are built either way
    assert awq["generate"].key != rtn["generate"].key and awq["register"].key != rtn["register"].key


def test_the_lora_inputs_setting_does_not_move_the_merged_graph():
    a, b = point(MERGED), point(MERGED, "export.lora_targets=[self_attn.qkv_proj]")
    assert a["export"].key != b["export"].key and a["merged"].key == b["merged"].key


def test_the_merged_artifact_records_only_what_its_key_covers():
    node = point(MERGED)["merged"]
    assert "merge" not in node.config["export"] and "lora_targets" not in node.config["export"]


# --- refusals --------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,message", [
    (("export.merge=gptq",), "config field 'export.merge': must be null"),
    (("export.lm_head=int2",), "config field 'export.lm_head': must be fp32, int8 or int4"),
    ((MERGED, "export.precision=fp32"), "config field 'export.merge': merges into an int4 graph"),
])
def test_a_bad_merge_setting_is_one_line_naming_the_field(overrides, message):
    with pytest.raises(ModelmakeError, match=message) as e:
        build_plan(overrides=list(overrides))
    assert "\n" not in str(e.value)


def test_a_merged_export_with_no_finetune_in_the_chain_is_refused_naming_the_field():
    """A recipe whose chain has no fine-tune (here: the table without finetune, adapter and what
    reads them) cannot merge one: the plan says so before any work, naming export.merge."""
    keep = ("base", "dataset", "quantize", "export", "merged")
    recipe = dataclasses.replace(RECIPE, stages=tuple(s for s in RECIPE.stages if s.name in keep), final="merged")
    assert isinstance(recipe, Recipe)
    from modelmake.graph.plan import build_plan as plan_of

    with pytest.raises(ModelmakeError) as e:
        plan_of(recipe, overrides=[MERGED])
    assert str(e.value) == ("config field 'export.merge': stage merged needs finetune, which this configuration's "
                            "graph does not have")
    assert "merged" not in plan_of(recipe, overrides=[]).finals[0]  # not asked: not there, nothing refused


TINY_PHI3 = {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_size": 16,
             "intermediate_size": 32, "num_attention_heads": 2, "num_key_value_heads": 2, "num_hidden_layers": 2}


def adapter(tmp_path, r=4, cfg_r=None, modules=("self_attn.qkv_proj", "mlp.down_proj"), layers=2, drop=None):
    """A peft LoRA folder for TINY_PHI3 (or one that does not fit it)."""
    from safetensors.numpy import save_file

    shapes = {"self_attn.qkv_proj": (16, 48), "self_attn.o_proj": (16, 16), "mlp.gate_up_proj": (16, 64),
              "mlp.down_proj": (32, 16), "self_attn.q_proj": (16, 16)}
    tensors = {}
    for layer in range(layers):
        for m in modules:
            i, o = shapes[m]
            pre = f"base_model.model.model.layers.{layer}.{m}"
            tensors[f"{pre}.lora_A.weight"] = np.zeros((r, i), np.float32)
            tensors[f"{pre}.lora_B.weight"] = np.zeros((o, r), np.float32)
    if drop:
        del tensors[drop]
    d = tmp_path / "adapter"
    d.mkdir()
    save_file(tensors, str(d / "adapter_model.safetensors"))
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": cfg_r or r, "lora_alpha": 8,
                                                       "target_modules": [m.split(".")[-1] for m in modules]}))
    return d


def test_an_adapter_that_fits_the_base_is_taken(tmp_path):
    fit = check_adapter(adapter(tmp_path), TINY_PHI3)
    assert fit == {"rank": 4, "targets": ["down_proj", "qkv_proj"], "modules": 4}


@pytest.mark.parametrize("kind,message", [
    ("rank", "lora_A is \\[4, (16|32)\\], but the base.s .* and the adapter.s rank is 8"),
    ("target", "the base \\(Phi3ForCausalLM\\) has no module 'q_proj'"),
    ("layers", "the base has 2 layers"),
    ("pair", "has one of lora_A/lora_B only"),
])
def test_an_adapter_whose_rank_or_targets_do_not_match_the_base_is_refused(tmp_path, kind, message):
    d = {"rank": lambda: adapter(tmp_path, cfg_r=8),
         "target": lambda: adapter(tmp_path, modules=("self_attn.q_proj",)),
         "layers": lambda: adapter(tmp_path, layers=3),
         "pair": lambda: adapter(tmp_path, drop="base_model.model.model.layers.1.mlp.down_proj.lora_B.weight")}[kind]()
    with pytest.raises(ModelmakeError, match=message) as e:
        check_adapter(d, TINY_PHI3)
    assert str(e.value).startswith("config field 'export.merge': ") and "\n" not in str(e.value)


# --- the built graphs (the session's tiny chain) ------------------------------------------------------
EXACT = (MERGED, "export.accuracy_level=1")  # fp32 activations: the int4 weights computed as torch does


@pytest.fixture(scope="module")
def exact_merged(project):
    from helpers.project import build, nodes

    build(project, *EXACT, until="merged")
    return nodes(project, *EXACT)


def test_the_merged_graphs_have_no_lora_inputs(exact_merged):
    import onnx

    from modelmake.stages.merged_layout import MERGED_ROUTES, merged_graph

    for route in MERGED_ROUTES:
        model = onnx.load(merged_graph(exact_merged["merged"].path, route) / "model.onnx", load_external_data=False)
        assert not [i.name for i in model.graph.input if i.name.startswith("lora.")], route
        assert not (merged_graph(exact_merged["merged"].path, route) / "lora_inputs.json").exists()


def test_the_merged_awq_graph_computes_torch_on_the_same_merged_requantized_weights(exact_merged):
    """The bound the exact export is held to (test_parity): the same greedy tokens, |dlogit| < 1e-2."""
    import onnxruntime_genai as og
    import torch
    from test_parity import og_greedy, prompts, torch_greedy
    from transformers import AutoTokenizer

    from modelmake.models.awq_fixes import load_awq_model
    from modelmake.stages.merged_layout import merged_graph

    ckpt = exact_merged["merged"].path / "awq" / "checkpoint"
    model, tok = load_awq_model(ckpt, dtype=torch.float32), AutoTokenizer.from_pretrained(ckpt)
    graph = og.Model(str(merged_graph(exact_merged["merged"].path, "awq")))
    for text in prompts(exact_merged):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        ref_tokens, ref_logits = torch_greedy(model, ids)
        tokens, logits = og_greedy(graph, ids)
        n = len(tokens)  # onnxruntime-genai stops at an end token
        assert n > 0 and tokens == ref_tokens[:n]
        assert np.abs(logits - ref_logits[:n]).max() < 1e-2


def test_the_merged_checkpoint_holds_the_adapter(exact_merged):
    """Merged-AWQ is not the base re-quantized: its weights moved by the adapter's delta."""
    import torch

    from modelmake.models.awq_fixes import dequantized_weight, load_awq_model

    merged = load_awq_model(exact_merged["merged"].path / "awq" / "checkpoint", dtype=torch.float32)
    base = load_awq_model(exact_merged["quantize"].path / "model", dtype=torch.float32)
    a = dequantized_weight(merged.model.layers[0].self_attn.qkv_proj)
    b = dequantized_weight(base.model.layers[0].self_attn.qkv_proj)
    assert a.shape == b.shape and not torch.equal(a, b)


def test_generate_streams_from_the_merged_graph_without_an_adapter_file(project, exact_merged):
    """The generate stage and `modelmake generate` deploy the merged graph alone."""
    import sys

    from helpers.project import build, nodes, run

    build(project, *EXACT, until="generate")
    point = nodes(project, *EXACT)
    gen = json.loads((point["generate"].path / "generation.json").read_text())
    assert gen["merged_route"] == "awq" and gen["completion"].strip()
    assert "adapter" not in point["generate"].inputs
    r = run(project, sys.executable, "-m", "modelmake", "generate", "--prompt", "What food should I try in Lisbon?",
            "--max-new-tokens", "8", *EXACT)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr[-2000:]


@pytest.mark.parametrize("pattern", ["q_proj", "self_attn.q_proj", "layers.1.self_attn.q_proj",
                                     r"layers\.\d+\.mlp\.down_proj", "model.layers.1.self_attn.q_proj", "proj"])
@pytest.mark.parametrize("module", ["model.layers.1.self_attn.q_proj", "model.layers.0.self_attn.q_proj",
                                    "model.layers.2.mlp.down_proj"])
def test_rank_and_alpha_patterns_are_looked_up_as_peft_does(pattern, module):
    """The merge's rank check and the adapter writer's alpha read rank_pattern/alpha_pattern with
    peft's own rule (a regex on the end of the full module name), not by the last name only."""
    from peft.utils.other import get_pattern_key

    from modelmake.models.peft_patterns import pattern_value

    patterns = {pattern: 32}
    assert pattern_value(patterns, module, 8) == patterns.get(get_pattern_key(patterns.keys(), module), 8)
