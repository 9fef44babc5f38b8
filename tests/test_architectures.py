"""Every supported family through the real build graph: tiny random Llama, Qwen2 (q/k/v bias) and
Mistral checkpoints, made here, go quantize -> finetune -> export -> adapter under Snakemake, and
the exported graphs compute what torch + peft computes; adapters on different module subsets and
ranks share one base graph per architecture.

Shapes are chosen to exercise what differs between families: GQA (2 kv heads of 4), so the
builder's packed q/k/v node has unequal column blocks; a vocab off every projection width (the
builder takes any Linear of vocab width for the LM head); intermediate divisible by AWQ's group 64.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from test_parity import adapters_on, fp32_logit_gap, og_greedy, prompts, torch_greedy
from test_parity import torch_model as awq_lora_model

from helpers.project import REPO, copy_project, snakemake
from modelmake.core.errors import ModelmakeError
from modelmake.graph.snakemake import config_args
from modelmake.models.awq_fixes import dequantize_checkpoint
from modelmake.models.families import FAMILIES, family_for_config
from modelmake.models.onnx_lora import write_adapter
from modelmake.stages.export import add_lora
from modelmake.stages.layout import ADAPTER_FILE

og = pytest.importorskip("onnxruntime_genai")
ARCHS = ["LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"]
FAST = ("train.steps=10", "quantize.calib_samples=8", "quantize.apply_clip=false",
        "evaluate.speed.enabled=false", "threads=1")
FP32, EXACT = "export=fp32_cpu", "export=int4_cpu_exact"
# A second adapter: another rank, and a subset that leaves k_proj out of the packed q/k/v node
# (its columns sit between q's and v's) and touches one MLP projection.
SUBSET = ("lora.r=4", "lora.target_modules=[q_proj,v_proj,down_proj]", "train.seed=1")
STEPS = 16
EXACT_TOL = 1e-2  # int4 with fp32 activations vs torch on the same AWQ weights; measured 3e-4..1.2e-3


def make_checkpoint(arch: str, out: Path, seed: int) -> Path:
    """A tiny random HF checkpoint of `arch`, briefly pre-trained so greedy decoding has margins.
    Mistral gets an explicit head_dim (heads * head_dim != hidden, as in Mistral-Nemo), so the
    attention widths come from the config, not from hidden / heads."""
    import transformers
    from omegaconf import OmegaConf

    from modelmake.models.tiny import (
        PHI3_STOP_TOKENS,
        corpus_texts,
        hf_tokenizer,
        pack_sequences,
        padded_vocab,
        pretrain,
        train_tokenizer,
    )

    torch.manual_seed(seed)
    texts = corpus_texts(REPO / "data" / "travel_sample.jsonl")
    tok = hf_tokenizer(train_tokenizer(texts, 600, 2))  # Phi-3 chat tokens and template
    hidden, heads, kv_heads, inter = 128, 4, 2, 256
    head_dim = 64 if arch == "MistralForCausalLM" else hidden // heads
    extra = {"head_dim": head_dim} if arch == "MistralForCausalLM" else {}
    widths = {hidden, heads * head_dim, kv_heads * head_dim, (heads + 2 * kv_heads) * head_dim, inter, 2 * inter}
    config = getattr(transformers, arch.replace("ForCausalLM", "Config"))(
        vocab_size=padded_vocab(len(tok), 64, widths), hidden_size=hidden, intermediate_size=inter,
        num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
        # Phi-3's stop tokens, as a real checkpoint declares them (the template's <|end|> among them)
        eos_token_id=[tok.convert_tokens_to_ids(t) for t in PHI3_STOP_TOKENS], pad_token_id=tok.pad_token_id,
        **extra,
    )
    model = getattr(transformers, arch)(config)
    with torch.no_grad():  # transformers initialises biases to zero; the builder drops all-zero biases
        for name, p in model.named_parameters():
            if name.endswith("proj.bias"):
                p.normal_(0, 0.1)
    settings = OmegaConf.create({"steps": 60, "batch_size": 16, "lr": 3e-3, "warmup": 10})
    pretrain(model, pack_sequences(tok, texts, 64), settings, seed=seed)
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def sweep(folders: dict[str, Path], *extra: str) -> list[str]:
    return ["model=phi35_mini", "model.revision=null", "model.source=" + ",".join(str(f) for f in folders.values()),
            *FAST, *extra]


def points(overrides: list[str], project: Path) -> dict[str, dict]:
    """The plan's nodes per architecture (one sweep point each), with paths inside `project`."""
    from modelmake.recipe import build_plan

    out = {}
    for point in build_plan(overrides=overrides).finals:
        for n in point.values():
            if not Path(n.path).is_absolute():
                n.path = project / n.path
        arch = json.loads((Path(point["base"].config["model"]["source"]) / "config.json").read_text())
        out[arch["architectures"][0]] = point
    return out


def build_adapters(project: Path, overrides: list[str]) -> None:
    """Snakemake builds only up to the adapters (targets before --config: else parsed as config)."""
    from modelmake.recipe import build_plan

    targets = build_plan(overrides=overrides).targets("adapter")
    # one torch thread per job, so two jobs run side by side on two cores
    args = [*targets, "--cores", "2", "--set-threads", "quantize=1", "finetune=1", "export=1", "base=1",
            *config_args(overrides)]
    r = snakemake(project, *args)
    assert r.returncode == 0, f"snakemake failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {arch: make_checkpoint(arch, root / arch.removesuffix("ForCausalLM").lower(), seed)
            for seed, arch in enumerate(ARCHS)}


@pytest.fixture(scope="module")
def built(tmp_path_factory, folders):
    """Two Snakemake runs over the three architectures: fp32 and exact-int4 exports with a rank-8
    adapter on every projection (auto), then a rank-4 adapter on a subset, on the same int4 graph."""
    project = copy_project(tmp_path_factory.mktemp("arch") / "modelmake")
    main = sweep(folders, "export=fp32_cpu,int4_cpu_exact")
    second = sweep(folders, EXACT, *SUBSET)
    build_adapters(project, main)
    build_adapters(project, second)
    return {"fp32": points(sweep(folders, FP32), project), "exact": points(sweep(folders, EXACT), project),
            "subset": points(second, project)}


def torch_model(point, adapter=True):
    """torch AWQ (+ LoRA), each int4 layer dequantized once instead of at every call: the same
    fp32 math as awq_fixes' CPU forward, so greedy decoding by full recompute stays fast."""
    import types

    from modelmake.models.awq_fixes import WQLinear_GEMM, dequantized_weight

    model, tok = awq_lora_model(point, adapter)
    for module in model.modules():
        if isinstance(module, WQLinear_GEMM):
            def forward(self, x, w=dequantized_weight(module, torch.float32)):
                out = x.to(torch.float32) @ w
                if self.bias is not None:
                    out = out + self.bias.to(torch.float32)
                return out.to(x.dtype)
            module.forward = types.MethodType(forward, module)
    return model, tok


# --- the family table ---------------------------------------------------------------------
def test_every_family_is_taken_by_both_autoawq_and_the_builder():
    """The table only lists what both libraries dispatch on (checked in their installed sources)."""
    import inspect

    from awq.models.auto import AWQ_CAUSAL_LM_MODEL_MAP
    from onnxruntime_genai.models import builder

    dispatch = set(re.findall(r'config\.architectures\[0\] == "(\w+)"', inspect.getsource(builder)))
    for fam in FAMILIES.values():
        assert fam.model_type in AWQ_CAUSAL_LM_MODEL_MAP, fam
        assert fam.architecture in dispatch, fam


def test_an_unsupported_architecture_is_refused_naming_it_and_the_supported_list():
    with pytest.raises(ModelmakeError, match=r"'GPT2LMHeadModel' is not supported.*LlamaForCausalLM"):
        family_for_config({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})


def test_a_local_folder_of_an_unsupported_architecture_is_refused_at_plan_time(tmp_path):
    from modelmake.recipe import build_plan

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(ModelmakeError, match="GPT2LMHeadModel"):
        build_plan(overrides=["model=phi35_mini", "model.revision=null", f"model.source={tmp_path}"])


@pytest.mark.parametrize("override,field", [
    ("lora.target_modules=[qkv_proj]", "lora.target_modules"),       # Phi-3's name, not Llama's
    ("lora.target_modules=[q_proj,nope]", "lora.target_modules"),
    ("export.lora_targets=[mlp.gate_up_proj]", "export.lora_targets"),
])
def test_targets_that_name_no_module_of_the_model_are_refused_naming_the_field(folders, override, field):
    from modelmake.recipe import build_plan

    ov = ["model=phi35_mini", "model.revision=null", f"model.source={folders['LlamaForCausalLM']}", override]
    with pytest.raises(ModelmakeError, match=f"'{re.escape(field)}'.*LlamaForCausalLM"):
        build_plan(overrides=ov)


# --- through the build graph --------------------------------------------------------------
def check_greedy(model, tok, graph, ad, name, point, tol):
    """The graph's greedy tokens are torch's up to the first near-tie in torch's logits (within
    `tol` of each other, where either side may pick either token); logits stay within `tol`."""
    compared = 0
    for text in prompts(point):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        ref_tokens, ref_logits = torch_greedy(model, ids, STEPS)
        tokens, logits = og_greedy(graph, ids, ad, name, STEPS)
        for i, tok_id in enumerate(tokens):  # onnxruntime-genai stops at an end token
            assert np.abs(logits[i] - ref_logits[i]).max() < tol, (text, i)
            top2 = np.sort(ref_logits[i])[-2:]
            if top2[1] - top2[0] < 2 * tol:
                break
            assert tok_id == ref_tokens[i], (text, i)
            compared += 1
    assert compared >= 8, "too few confident steps to compare"


@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_export_with_adapter_matches_torch_peft_logits(built, arch):
    point = built["fp32"][arch]
    assert json.loads((point["export"].path / "model" / "lora_inputs.json").read_text())["architecture"] == arch
    worst = fp32_logit_gap(point, STEPS, load=torch_model)
    assert worst <= 1e-4, f"{arch}: max abs logit diff {worst}"


@pytest.mark.parametrize("arch", ARCHS)
def test_exact_int4_export_with_adapter_gives_torch_awq_lora_greedy_tokens(built, arch):
    point = built["exact"][arch]
    model, tok = torch_model(point)
    graph = og.Model(str(point["export"].path / "model"))
    check_greedy(model, tok, graph, adapters_on(graph, a=point["adapter"].path / ADAPTER_FILE), "a", point, EXACT_TOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_two_adapters_of_different_rank_and_modules_share_one_graph(built, arch):
    full, subset = built["exact"][arch], built["subset"][arch]
    assert subset["export"].key == full["export"].key and subset["finetune"].key != full["finetune"].key
    saved = json.loads((subset["finetune"].path / "adapter" / "adapter_config.json").read_text())
    assert sorted(saved["target_modules"]) == ["down_proj", "q_proj", "v_proj"] and saved["r"] == 4
    graph = og.Model(str(full["export"].path / "model"))
    ad = adapters_on(graph, full=full["adapter"].path / ADAPTER_FILE, subset=subset["adapter"].path / ADAPTER_FILE)
    m_full, tok = torch_model(full)
    m_subset, _ = torch_model(subset)
    m_base, _ = torch_model(full, adapter=False)
    ids = tok(prompts(full, 1)[0], add_special_tokens=False)["input_ids"]
    mine = {"full": og_greedy(graph, ids, ad, "full", 1)[1][0], "subset": og_greedy(graph, ids, ad, "subset", 1)[1][0],
            "none": og_greedy(graph, ids, steps=1)[1][0]}
    refs = {"full": torch_greedy(m_full, ids, 1)[1][0], "subset": torch_greedy(m_subset, ids, 1)[1][0],
            "none": torch_greedy(m_base, ids, 1)[1][0]}
    for name, logits in mine.items():
        diffs = {other: float(np.abs(logits - ref).max()) for other, ref in refs.items()}
        assert diffs[name] < EXACT_TOL, (arch, name, diffs)  # each adapter computes its own torch model...
        assert all(d > 10 * EXACT_TOL for other, d in diffs.items() if other != name), (arch, name,
                                                                                        diffs)  # ...no other


def test_the_graph_has_lora_inputs_for_every_projection_of_the_family(built):
    """One A per group of projection nodes reading the same tensor, one B per node: Llama-style
    layers (packed q/k/v; gate and up apart, reading one tensor) have 4 groups and 5 nodes."""
    for arch, point in built["exact"].items():
        spec = json.loads((point["export"].path / "model" / "lora_inputs.json").read_text())
        modules = {m.split(".", 3)[3] for v in spec["inputs"].values() for m in v["modules"]}
        assert modules == set(FAMILIES[arch].modules), arch
        layer0 = [g for g in spec["groups"] if g["layer"] == 0]
        assert (len(layer0), sum(len(g["nodes"]) for g in layer0)) == (4, 5), arch
        assert len(spec["inputs"]) == 2 * (4 + 5)  # 2 layers


@pytest.mark.parametrize("precision,option,nodes", [
    ("int4", "disable_qkv_fusion=true", ["attn/q_proj", "attn/k_proj", "attn/v_proj"]),  # q/k/v apart
    ("fp32", "fuse_mlp_gate_up=true", ["mlp/gate_up_proj"]),                               # gate/up packed
])
def test_the_builders_other_layouts_take_the_same_adapter(built, tmp_path, precision, option, nodes):
    """The family table's alternative layouts, built for real (builder options modelmake does not
    set today): the same peft adapter maps onto them and the graph still computes torch + peft."""
    point = built["exact" if precision == "int4" else "fp32"]["LlamaForCausalLM"]
    awq_dir = point["quantize"].path / "model"
    src = awq_dir
    if precision == "fp32":
        src = tmp_path / "dense"
        dequantize_checkpoint(awq_dir, src)
    out = tmp_path / "graph"
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(out), "-p", precision,
           "-e", "cpu", "-c", str(tmp_path / "cache"), "--extra_options", "hf_token=false", "accuracy_level=1",
           "nodes_to_exclude=/lm_head/MatMul", option]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    names = {n.name for n in onnx.load(out / "model.onnx", load_external_data=False).graph.node}
    assert all(any(name.startswith(f"/model/layers.0/{p}/MatMul") for name in names) for p in nodes), "layout not built"
    config = json.loads((awq_dir / "config.json").read_text())
    add_lora(out, config, list(FAMILIES["LlamaForCausalLM"].modules))
    write_adapter(point["finetune"].path / "adapter", out, tmp_path / "a.onnx_adapter")
    model, tok = torch_model(point)
    graph = og.Model(str(out))
    ad = adapters_on(graph, a=tmp_path / "a.onnx_adapter")
    if precision == "fp32":
        ids = tok(prompts(point, 1)[0], add_special_tokens=False)["input_ids"]
        tokens, logits = og_greedy(graph, ids, ad, "a", STEPS)
        ref_tokens, ref_logits = torch_greedy(model, ids, STEPS)
        assert tokens == ref_tokens[: len(tokens)] and np.abs(logits - ref_logits[: len(tokens)]).max() <= 1e-4
    else:
        check_greedy(model, tok, graph, ad, "a", point, EXACT_TOL)
