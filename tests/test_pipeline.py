"""The build graph, end to end: what Snakemake would rebuild after each kind of change (its own
dry run), atomic refusal, the shared travel set through the whole chain."""

import json
import shutil
import sys

import pytest

from helpers.project import SHARED_DATA, build, copy_project, nodes, parse_jobs, planned_jobs, run, snakemake


def once(*stages):
    return {s: 1 for s in stages}


# Values no other test module builds (they share the session's project): a dry run must see them new.
# what follows every per-point change: the point's evaluate and registration, and the report
TAIL = ("evaluate", "register", "report")
DOWNSTREAM_OF_LORA = once("finetune", "adapter", "generate", *TAIL)


def test_cold_build_produced_every_artifact_with_its_manifest(project):
    point = nodes(project)
    for stage, node in point.items():
        m = json.loads(node.manifest.read_text())
        assert m["key"] == node.key and m["stage"] == stage
        assert m["code"]["sha256"] == node.code["sha256"]
        assert {k: v["key"] for k, v in m["inputs"].items()} == {k: n.key for k, n in node.inputs.items()}
    ft = json.loads(point["finetune"].manifest.read_text())["metrics"]
    assert ft["eval_loss"] < 0.7 * ft["eval_loss_before"], ft  # the fine-tune learned something
    assert (point["finetune"].path / "adapter" / "adapter_model.safetensors").exists()
    assert (point["adapter"].path / "adapter.onnx_adapter").exists()
    gen = json.loads((point["generate"].path / "generation.json").read_text())
    assert gen["new_tokens"] > 0 and gen["completion"].strip()


def test_second_run_does_nothing(project):
    assert planned_jobs(project) == {}


@pytest.mark.parametrize("change", ["lora.r=12", "train.lr=3e-4", "train.steps=50", "lora.alpha=32"])
def test_lora_only_change_reruns_finetune_adapter_generate_only(project, change):
    assert planned_jobs(project, change) == DOWNSTREAM_OF_LORA


def test_generate_only_change_reruns_generate_only(project):
    assert planned_jobs(project, "generate.max_new_tokens=8") == once("generate", "register", "report")


def test_sweep_shares_one_quantize_and_one_export(project):
    assert planned_jobs(project, "lora.r=5,6,7") == {"finetune": 3, "adapter": 3, "generate": 3, "evaluate": 3,
                                                      "register": 3, "report": 1}


def test_quantize_change_keeps_base_and_dataset(project):
    jobs = planned_jobs(project, "quantize.apply_clip=false")
    assert jobs == once("quantize", "quality", "finetune", "export", "adapter", "generate", *TAIL)


def test_changed_data_file_reruns_what_reads_it(project, tmp_path):
    data = tmp_path / "travel.jsonl"
    shutil.copy(project / "data" / "travel_sample.jsonl", data)
    assert planned_jobs(project, f"data.path={data}") == {}  # same content, other path: nothing
    with data.open("a") as f:
        f.write(json.dumps({"prompt": "Is Oslo expensive?", "response": "Yes, plan a budget."}) + "\n")
    jobs = planned_jobs(project, f"data.path={data}")
    assert jobs == once("dataset", "quantize", "quality", "finetune", "export", "adapter", "generate", *TAIL)


EVERYTHING_BUT_BASE = once("dataset", "quantize", "quality", "finetune", "export", "adapter", "generate", *TAIL)


# what a code key covers (docs/keys.md): the stage's module and the computation it imports, not
# the machinery that runs it
@pytest.mark.parametrize("module,expected", [
    ("stages/finetune.py", DOWNSTREAM_OF_LORA),
    ("stages/dataset.py", EVERYTHING_BUT_BASE),
    ("data/records.py", EVERYTHING_BUT_BASE),
    ("models/onnx_lora.py", once("export", "adapter", "generate", *TAIL)),
    ("models/builder.py", once("export", "adapter", "generate", *TAIL)),
    ("stages/generate.py", once("generate", "register", "report")),
    ("stages/report.py", once("report")),
    ("models/awq_fixes.py", once("quality", "finetune", "export", "adapter", "generate", *TAIL)),  # no re-quantize
    ("models/awq_quantizer.py", once("quantize", "quality", "finetune", "export", "adapter", "generate", *TAIL)),
    ("models/scoring.py", once("quality", "evaluate", "report")),  # the registration reads no score
    ("core/locks.py", {}),  # the machinery: a fix there re-keys nothing
    ("graph/runner.py", {}),
    ("graph/plan.py", {}),
])
def test_editing_a_module_reruns_the_stages_that_import_it(project, tmp_path, module, expected):
    edited = copy_project(tmp_path / "p", built=project)
    assert planned_jobs(edited) == {}
    with (edited / "src" / "modelmake" / module).open("a") as f:
        f.write("\n# an edit\n")
    assert planned_jobs(edited) == expected


def test_unknown_config_key_stops_snakemake_with_one_clear_message(project):
    r = snakemake(project, "-n", "--config", "lora={rank: 16}")
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "modelmake: config overrides" in out and "no config field 'lora.rank'; did you mean 'lora.r'?" in out


def test_nested_snakemake_config_is_the_same_override(project):
    assert planned_jobs(project, "lora.r=12") == DOWNSTREAM_OF_LORA
    r = snakemake(project, "-n", "--config", "lora={r: 12}", "train={lr: 1.0e-3}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert parse_jobs(r.stdout + r.stderr) == DOWNSTREAM_OF_LORA


def test_a_refused_stage_leaves_no_folder_behind(project, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n')
    before = set((project / "artifacts" / "dataset").iterdir())
    r = run(project, sys.executable, "-m", "modelmake", "stage", "dataset", f"data.path={bad}")
    assert r.returncode == 2
    assert f"{bad}:2: field 'response' is missing" in r.stderr
    assert set((project / "artifacts" / "dataset").iterdir()) == before  # no final, no temp folder


def test_a_stage_alone_refuses_when_its_input_is_not_built(project):
    r = run(project, sys.executable, "-m", "modelmake", "stage", "finetune", "quantize.group_size=128")
    assert r.returncode == 2
    assert "input 'quantize' is not built" in r.stderr


@pytest.mark.skipif(not (SHARED_DATA / "data_sample_travel.jsonl").exists(), reason="../shared/data not present")
def test_shared_travel_set_runs_through_the_whole_chain(project):
    ov = (f"data.path={SHARED_DATA / 'data_sample_travel.jsonl'}", "train.steps=20")  # its records are long
    build(project, *ov, until="generate")
    point = nodes(project, *ov)
    ds = json.loads(point["dataset"].manifest.read_text())["metrics"]
    assert ds["records"] == 289 and ds["distinct"] < 289  # real data: repeated prompts
    assert json.loads(point["generate"].manifest.read_text())["metrics"]["new_tokens"] > 0
    assert point["base"].key == nodes(project)["base"].key  # the tiny base is not rebuilt
