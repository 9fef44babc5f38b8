"""What is refused before any work, with one line naming the field (or file and line): bad data,
templates that do not fit the model, model folders that cannot load or cannot fit, typos. Each
refusal comes from building the plan, so `modelmake plan`, `build -- -n` and a build all give it
before a stage runs. Nothing here builds."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers.folders import hf_folder
from helpers.project import REPO, run
from modelmake.core.errors import ModelmakeError
from modelmake.recipe import build_plan, compose

PHI3_TEXT = "data.template=<|user|>\\n{prompt}<|end|>\\n<|assistant|>\\n{response}<|end|>"


def refused(*overrides: str) -> str:
    with pytest.raises(ModelmakeError) as e:
        build_plan(overrides=list(overrides))
    return str(e.value)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return hf_folder(tmp_path_factory.mktemp("hf") / "model")


# --- data -------------------------------------------------------------------------------------
def test_a_broken_data_file_is_refused_by_plan_with_its_file_and_lines_only(tmp_path):
    bad = tmp_path / "travel_broken.jsonl"
    lines = [json.dumps({"prompt": f"q{i}?", "response": f"a{i}."}) for i in range(10)]
    lines[6] = '{"prompt": "q6?", "response" "a6."}'
    lines[8] = json.dumps({"prompt": "q8?"})
    bad.write_text("\n".join(lines) + "\n")
    r = run(REPO, sys.executable, "-m", "modelmake", "plan", f"data.path={bad}")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [
        f"modelmake: error: 2 bad record(s) in {bad}:",
        f"{bad}:7: not valid JSON (Expecting ':' delimiter, column 30)",
        f"{bad}:9: field 'response' is missing (the template needs ['prompt', 'response'])",
    ]


@pytest.mark.parametrize("kind,why", [("empty", "holds no records"), ("directory", "is a directory"),
                                      ("fifo", "is not a regular file"), ("device", "is not a regular file"),
                                      ("missing", "data file not found")])
def test_a_data_path_that_is_not_a_data_file_is_named_for_what_it_is(tmp_path, kind, why):
    path = {"empty": tmp_path / "empty.jsonl", "directory": tmp_path, "fifo": tmp_path / "fifo.jsonl",
            "device": "/dev/zero", "missing": tmp_path / "nope.jsonl"}[kind]
    if kind == "empty":
        path.write_text("")
    if kind == "fifo":
        os.mkfifo(path)
    assert why in refused(f"data.path={path}")


def test_a_newline_in_a_data_file_name_is_kept_exact(tmp_path):
    odd = tmp_path / "travel\nsample.jsonl"
    odd.write_bytes((REPO / "data" / "travel_sample.jsonl").read_bytes())
    node = build_plan(overrides=[f"data.path={odd}"]).finals[0]["dataset"]
    assert list(node.data) == [str(odd)]


def test_data_fields_map_a_text_templates_slots_onto_the_records_fields(tmp_path):
    """`data.fields.user=question` with the cookbook's template fills its {prompt} from each record's
    `question`: the settings do what they say, with a text template as with `chat`."""
    from modelmake.data.templates import field_map
    from modelmake.stages.dataset import prepare

    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": f"q{i}?", "answer": f"a{i}."}) + "\n" for i in range(10)))
    ov = [f"data.path={qa}", "data.fields.user=question", "data.fields.assistant=answer"]
    cfg = compose(tuple(build_plan(overrides=ov).points[0]))
    mapping = field_map(cfg.data.template, cfg.data.response_marker, cfg.data.fields)
    assert mapping == {"prompt": "question", "response": "answer"}
    train, evals = prepare(qa, cfg.data.template, cfg.data.response_marker, 0.2, 0, mapping=mapping)
    assert train[0]["text"].startswith("<|user|>\nq") and train[0]["completion"].startswith("a")
    assert "field 'question' is missing" in refused("data.fields.user=question")  # the sample has no such field
    why = refused("data.template=Q: {prompt}\\nA: ", "data.response_marker=A: ", "data.fields.assistant=answer")
    assert "config field 'data.fields.assistant': has no effect: data.template has no assistant slot" in why


# --- templates that fit the model -------------------------------------------------------------
def test_a_model_preset_brings_its_own_format_and_export():
    smol, tiny = compose(("model=smollm2_135m",)), compose(())
    assert smol.data.template == "chat" and smol.export.accuracy_level == 1  # what experiment=smollm2 measured
    assert tiny.data.template.startswith("<|user|>\n{prompt}<|end|>") and tiny.export.accuracy_level == 4


def test_the_phi3_text_template_on_smollm2_is_refused_naming_the_template():
    why = refused("model=smollm2_135m", PHI3_TEXT, "data.response_marker=<|assistant|>\\n")
    assert why.startswith("config field 'data.template': the marker '<|assistant|>' is not a special token of "
                          "smollm2-135m-instruct's tokenizer")
    assert "data.template=chat" in why and "data.check_template=false" in why


def test_an_end_marker_that_is_no_stop_token_is_refused_and_meaning_it_is_allowed():
    # SmolLM2's own markers, but the turn ends with <|endoftext|>, not its stop token <|im_end|>
    tpl = "data.template=<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n{response}<|endoftext|>"
    marker = "data.response_marker=<|im_start|>assistant\\n"
    why = refused("model=smollm2_135m", tpl, marker)
    assert "the end marker '<|endoftext|>' is not a stop token of smollm2-135m-instruct" in why
    build_plan(overrides=["model=smollm2_135m", tpl, marker, "data.check_template=false"])


def test_a_chat_template_the_sandbox_refuses_is_refused_before_work(folder, tmp_path):
    evil = tmp_path / "evil"
    evil.mkdir()
    for f in folder.iterdir():
        (evil / f.name).write_bytes(f.read_bytes())
    (evil / "chat_template.jinja").write_text("{{ messages.__class__.__mro__ }}")
    why = refused("model=phi35_mini", f"model.source={evil}", "model.revision=null", "data.template=chat")
    assert "config field 'data.template': the chat template of model" in why and "SecurityError" in why


# --- model folders ----------------------------------------------------------------------------
def test_a_folder_whose_weights_are_an_empty_decoy_is_refused(folder, tmp_path):
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    for f in folder.iterdir():
        if f.suffix != ".safetensors":
            (decoy / f.name).write_bytes(f.read_bytes())
    (decoy / "pytorch_model.bin").write_bytes(b"pickle")
    (decoy / "model.safetensors").write_bytes(b"")
    why = refused("model=phi35_mini", f"model.source={decoy}", "model.revision=null")
    assert "model.safetensors is not a safetensors file" in why


def test_a_model_too_large_for_the_machine_is_refused_with_both_sizes(tmp_path):
    huge = hf_folder(tmp_path / "huge", hidden_size=10_000_000, intermediate_size=10_000_000)
    why = refused("model=phi35_mini", f"model.source={huge}", "model.revision=null")
    assert "config field 'model.source'" in why and "GB in fp32: more than this machine's" in why


def test_out_of_memory_in_a_stage_is_one_line_with_the_size():
    code = ("import torch\nfrom modelmake.graph.runner import guarded\n"
            "guarded(lambda: torch.empty(10**13, dtype=torch.uint8), 'quantize')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("modelmake: error: quantize: out of memory: it tried to allocate 10000.0 GB;")


# --- typos ------------------------------------------------------------------------------------
def test_a_typo_gets_the_nearest_key_and_plus_is_refused():
    assert "no config field 'lora.rank'; did you mean 'lora.r'?" in refused("lora.rank=8")
    assert "modelmake's config takes no new keys" in refused("+lora.rank=8") and "'lora.r'" in refused("+lora.rank=8")
    assert "no option 'smollm2' in config group 'model'" in refused("model=smollm2")
    assert "did you mean 'smollm2_135m'?" in refused("model=smollm2")
