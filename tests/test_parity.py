"""The exported graph computes what torch + peft computes on the same weights, with an adapter
active; two adapters share one graph; with none active the graph is exactly the base."""

import json
import shutil
import sys

import numpy as np
import pytest
import torch

from helpers.project import build, nodes, run
from modelmake.core.errors import ModelmakeError
from modelmake.models.onnx_lora import write_adapter
from modelmake.stages.layout import ADAPTER_FILE

og = pytest.importorskip("onnxruntime_genai")
STEPS = 24
TOLERANCE = 0.3  # max |logit diff| of the default int4 graph (int8 activations) vs torch; measured 0.07-0.13


def prompts(point, n=3):
    from modelmake.stages.layout import read_split
    return [r["prompt"] for r in read_split(point["dataset"].path, "eval")[:n]]


def torch_model(point, adapter=True):
    from peft import PeftModel
    from transformers import AutoTokenizer

    from modelmake.models.awq_fixes import load_awq_model

    qdir = point["quantize"].path / "model"
    model = load_awq_model(qdir, dtype=torch.float32)
    if adapter:
        model = PeftModel.from_pretrained(model, point["finetune"].path / "adapter")
    return model.eval(), AutoTokenizer.from_pretrained(qdir)


@torch.no_grad()
def torch_greedy(model, ids, steps=STEPS):
    """Greedy decode by full recompute: (tokens, last-position logits of every step)."""
    seq, logits = list(ids), []
    for _ in range(steps):
        last = model(torch.tensor([seq])).logits[0, -1].float().numpy()
        logits.append(last)
        seq.append(int(last.argmax()))
    return seq[len(ids):], np.stack(logits)


def og_greedy(model, ids, adapters=None, name=None, steps=STEPS):
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + steps, do_sample=False)
    gen = og.Generator(model, params)
    if adapters is not None:
        gen.set_active_adapter(adapters, name)
    gen.append_tokens(ids)
    tokens, logits = [], []
    while not gen.is_done():
        logits.append(np.asarray(gen.get_logits())[0, -1].copy())
        gen.generate_next_token()
        tokens.append(int(gen.get_next_tokens()[0]))
    return tokens, np.stack(logits)


def adapters_on(model, **files):
    ad = og.Adapters(model)
    for name, path in files.items():
        ad.load(str(path), name)
    return ad


@pytest.fixture(scope="module")
def default(project):
    return nodes(project)


@pytest.fixture(scope="module")
def exact(project):
    """The int4 graph with fp32 activations (accuracy_level 1): AWQ's weights computed as torch does."""
    ov = ("export=int4_cpu_exact",)
    build(project, *ov, until="adapter")
    return nodes(project, *ov)


@pytest.fixture(scope="module")
def fp32(project):
    build(project, "experiment=parity_fp32", until="adapter")
    return nodes(project, "experiment=parity_fp32")


def fp32_logit_gap(point, steps=STEPS, load=None) -> float:
    """Greedy decode of a few eval prompts through the fp32 graph + adapter and through torch +
    peft (`load(point)`, default torch_model): the same tokens (asserted) and the largest logit
    difference on the way."""
    model, tok = (load or torch_model)(point)
    graph = og.Model(str(point["export"].path / "model"))
    ad = adapters_on(graph, a=point["adapter"].path / ADAPTER_FILE)
    worst = 0.0
    for text in prompts(point):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        ref_tokens, ref_logits = torch_greedy(model, ids, steps)
        tokens, logits = og_greedy(graph, ids, ad, "a", steps)
        n = min(len(tokens), len(ref_tokens))  # onnxruntime-genai stops at an end token
        assert n > 0 and tokens[:n] == ref_tokens[:n], text
        worst = max(worst, float(np.abs(logits[:n] - ref_logits[:n]).max()))
    return worst


def test_fp32_export_matches_torch_peft_logits(fp32):
    worst = fp32_logit_gap(fp32)
    assert worst <= 1e-4, f"max abs logit diff {worst}"


def test_exact_int4_export_gives_torch_peft_greedy_tokens(exact, default):
    assert exact["finetune"].key == default["finetune"].key and exact["export"].key != default["export"].key
    model, tok = torch_model(exact)
    graph = og.Model(str(exact["export"].path / "model"))
    ad = adapters_on(graph, a=exact["adapter"].path / ADAPTER_FILE)
    for text in prompts(exact):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        ref_tokens, ref_logits = torch_greedy(model, ids)
        tokens, logits = og_greedy(graph, ids, ad, "a")
        n = len(tokens)  # onnxruntime-genai stops at an end token
        assert n > 0 and tokens == ref_tokens[:n]
        assert np.abs(logits - ref_logits[:n]).max() < 1e-2  # AWQ weights run as they are


def test_default_int4_export_with_int8_activations_stays_close_to_torch(default):
    """accuracy_level 4 quantizes activations to int8 inside MatMulNBits: close, not exact."""
    model, tok = torch_model(default)
    graph = og.Model(str(default["export"].path / "model"))
    ad = adapters_on(graph, a=default["adapter"].path / ADAPTER_FILE)
    ids = tok(prompts(default, 1)[0], add_special_tokens=False)["input_ids"]
    ref_tokens, ref_logits = torch_greedy(model, ids, steps=1)
    tokens, logits = og_greedy(graph, ids, ad, "a", steps=1)
    assert tokens == ref_tokens and 0 < np.abs(logits - ref_logits).max() < TOLERANCE


def test_two_adapters_share_one_graph_and_each_matches_its_own_torch(default, second):
    assert second["export"].key == default["export"].key  # one graph for both
    graph = og.Model(str(default["export"].path / "model"))
    ad = adapters_on(graph, r8=default["adapter"].path / ADAPTER_FILE, r4=second["adapter"].path / ADAPTER_FILE)
    m8, tok = torch_model(default)
    m4, _ = torch_model(second)
    ids = tok(prompts(default, 1)[0], add_special_tokens=False)["input_ids"]
    _, l8 = og_greedy(graph, ids, ad, "r8", steps=1)
    _, l4 = og_greedy(graph, ids, ad, "r4", steps=1)
    _, l0 = og_greedy(graph, ids, steps=1)
    t8, t4 = torch_greedy(m8, ids, 1)[1][0], torch_greedy(m4, ids, 1)[1][0]
    t0 = torch_greedy(torch_model(default, adapter=False)[0], ids, 1)[1][0]
    graph_logits, refs = {"r8": l8[0], "r4": l4[0], "none": l0[0]}, {"r8": t8, "r4": t4, "none": t0}
    for name, mine in graph_logits.items():
        diffs = {other: np.abs(mine - ref).max() for other, ref in refs.items()}
        assert diffs[name] < TOLERANCE, diffs  # each adapter computes its own torch model...
        assert all(d > 3 * TOLERANCE for other, d in diffs.items() if other != name), diffs  # ...no other one


def test_no_adapter_is_exactly_the_builders_base_graph(default, tmp_path):
    from omegaconf import OmegaConf

    from modelmake.stages.export import run_builder

    e = OmegaConf.create(default["export"].config["export"])
    run_builder(default["quantize"].path / "model", tmp_path / "plain", e, tmp_path / "cache", tmp_path / "b.log")
    ids = [5, 17, 99, 3, 250]
    _, with_lora_inputs = og_greedy(og.Model(str(default["export"].path / "model")), ids, steps=4)
    _, plain = og_greedy(og.Model(str(tmp_path / "plain")), ids, steps=4)
    assert np.array_equal(with_lora_inputs, plain)


def test_tokenizer_ids_match_between_hf_and_onnxruntime_genai(default):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default["quantize"].path / "model")
    ogt = og.Tokenizer(og.Model(str(default["export"].path / "model")))
    texts = prompts(default, 10) + ["Prices: 12,50 EUR (about $13.75)!", "  two  spaces, tabs\tand\nlines",
                                   "Café naïve – “quotes” 東京"]
    for text in texts:
        assert list(ogt.encode(text)) == tok(text, add_special_tokens=False)["input_ids"], text


# --- adapters that do not fit the graph are refused before anything is written -----------------
def tampered(default, tmp_path, edit):
    from safetensors.torch import load_file, save_file

    src = default["finetune"].path / "adapter"
    dst = tmp_path / "adapter"
    shutil.copytree(src, dst, copy_function=shutil.copyfile)  # copyfile: not the artifact's read-only mode
    tensors = load_file(dst / "adapter_model.safetensors")
    cfg = json.loads((dst / "adapter_config.json").read_text())
    tensors, cfg = edit(tensors, cfg)
    save_file(tensors, dst / "adapter_model.safetensors")
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


def first(tensors, suffix):
    return next(k for k in sorted(tensors) if k.endswith(suffix))


@pytest.mark.parametrize("what,edit,message", [
    ("rank mismatch",
     lambda t, c: ({**t, first(t, "lora_B.weight"): t[first(t, "lora_B.weight")][:, :4].contiguous()}, c),
     "has rank"),
    ("wrong width", lambda t, c: ({**t, first(t, "lora_A.weight"): torch.zeros(8, 300)}, c), "does not fit the graph"),
    ("unknown name", lambda t, c: ({k.replace("layers.0.", "layers.9."): v for k, v in t.items()}, c),
     "no LoRA inputs in the exported graph"),
    ("not LoRA", lambda t, c: ({**t, "base_model.model.lm_head.weight": torch.zeros(2, 2)}, c),
     "not a LoRA A/B weight"),
    ("missing pair", lambda t, c: ({k: v for k, v in t.items() if k != first(t, "lora_B.weight")}, c),
     "but not its pair"),
    ("other method", lambda t, c: (t, {**c, "peft_type": "IA3"}), "peft_type"),
])
def test_adapter_that_does_not_fit_is_refused_and_nothing_written(default, tmp_path, what, edit, message):
    bad = tampered(default, tmp_path, edit)
    out = tmp_path / "x.onnx_adapter"
    with pytest.raises(ModelmakeError, match=message):
        write_adapter(bad, default["export"].path / "model", out)
    assert not out.exists()


def test_onnxruntime_genai_itself_refuses_a_foreign_adapter(default, tmp_path):
    import onnxruntime as ort

    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters({"not.an.input": ort.OrtValue.ortvalue_from_numpy(np.zeros((4, 2), np.float32))})
    fmt.export_adapter(str(tmp_path / "foreign.onnx_adapter"))
    graph = og.Model(str(default["export"].path / "model"))
    ad = adapters_on(graph, f=tmp_path / "foreign.onnx_adapter")
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime-genai raises a bare RuntimeError-like type
        og_greedy(graph, [5, 6, 7], ad, "f", steps=1)


def test_cli_streams_with_the_adapter(project, default):
    r = run(project, sys.executable, "-m", "modelmake", "generate", "--prompt", "What food should I try in Lisbon?",
            "--max-new-tokens", "12")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and "tokens/s" in r.stderr
