"""Every config composes, the schema refuses bad values, sweeps expand, keys are shared."""


import pytest

from modelmake.core.errors import ModelmakeError
from modelmake.core.paths import CONF_DIR
from modelmake.graph.overrides import expand_sweep, overrides_from_config
from modelmake.recipe import build_plan, compose


def groups() -> list[str]:
    """The config groups conf/config.yaml's defaults list names (every folder of conf/ it composes)."""
    import yaml

    names = []
    for entry in yaml.safe_load((CONF_DIR / "config.yaml").read_text())["defaults"]:
        name = next(iter(entry)) if isinstance(entry, dict) else entry
        if name not in ("_self_", "experiment") and not name.startswith("override") and (CONF_DIR / name).is_dir():
            names.append(name)
    return names


GROUPS = groups()


def test_the_groups_are_read_from_the_config():
    assert {"model", "data", "resources", "register", "report", "evaluate"} <= set(GROUPS)


def options(group):
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(group, option):
    try:
        cfg = compose((f"{group}={option}",))
    except ModelmakeError as e:  # a provider whose runtime is not installed here: refused at plan time
        if group == "export" and "'export.execution_provider'" in str(e) and "does not provide" in str(e):
            pytest.skip(str(e))
        raise
    assert cfg[group] is not None


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(experiment):
    compose((f"experiment={experiment}",))


def test_every_config_file_opens_with_a_comment_or_defaults():
    for path in CONF_DIR.rglob("*.yaml"):
        first = path.read_text().lstrip().splitlines()[0]
        assert first.startswith(("#", "defaults:")), f"{path} should say what it is for"


@pytest.mark.parametrize("override,field", [
    ("lora.rr=4", "lora.rr"),                # unknown key
    ("lora.r=0", "lora.r"),
    ("lora.r=abc", "lora.r"),
    ("train.lr=-1", "train.lr"),
    ("lora.dropout=1.5", "lora.dropout"),
    ("data.eval_fraction=0", "data.eval_fraction"),
    ("quantize.group_size=96", "quantize.group_size"),  # does not divide hidden_size=256
    ("export.precision=int8", "export.precision"),
    ("data.path=data/nope.jsonl", "data.path"),
    ("train.weight_decay=-1", "train.weight_decay"),   # torch refused it 16 s into finetune
    ("train.warmup_steps=-5", "train.warmup_steps"),   # was accepted
    ("train.grad_accum_steps=0", "train.grad_accum_steps"),
    ("train.grad_accum_steps=1.5", "train.grad_accum_steps"),
    ("train.max_grad_norm=0", "train.max_grad_norm"),  # null is how to say "no clipping"
    ("train.max_grad_norm=-1", "train.max_grad_norm"),
])
def test_bad_config_is_refused_naming_the_field(override, field):
    with pytest.raises(ModelmakeError) as e:
        build_plan(overrides=[override])
    assert field.split(".")[-1] in str(e.value)


def test_no_gradient_clipping_is_null():
    assert compose(("train.max_grad_norm=null",)).train.max_grad_norm is None


@pytest.mark.parametrize("value,why", [("art/{key}", "holds ['{', '}']"), ("art\nx", "holds ['\\n']"),
                                       ("README.md", "is not a folder"), ("README.md/sub", "is not a folder")])
def test_an_artifacts_folder_that_cannot_be_one_is_refused(value, why):
    with pytest.raises(ModelmakeError, match="config field 'artifacts'") as e:
        build_plan(overrides=[f"artifacts={value}"])
    assert why in str(e.value)


def test_the_artifacts_folder_moves_every_path_and_reaches_every_command(tmp_path):
    from modelmake.recipe import stage_command

    plan = build_plan(overrides=[f"artifacts={tmp_path}/a"])
    default = build_plan()
    for stage, node in plan.finals[0].items():
        assert node.path == tmp_path / "a" / stage / default.finals[0][stage].key
        assert f"artifacts={tmp_path}/a" in stage_command(node)


def test_snakemake_config_becomes_hydra_overrides():
    ov = overrides_from_config({"lora.r": "8,16", "train.lr": 0.001, "lora.target_modules": ["qkv_proj", "o_proj"],
                                "quantize.apply_clip": False})
    assert ov == ["lora.r=8,16", "train.lr=0.001", "lora.target_modules=[qkv_proj,o_proj]", "quantize.apply_clip=false"]


def test_sweep_expands_to_the_cartesian_product():
    points = expand_sweep(["lora.r=4,8,16", "train.lr=1e-4,3e-4", "train.steps=50"])
    assert len(points) == 6
    assert ("lora.r=4", "train.lr=0.0001", "train.steps=50") in points


def test_sweep_shares_quantize_and_export_but_not_finetune():
    plan = build_plan({"lora.r": "4,8,16", "train.lr": "1e-4,3e-4"})
    assert len(plan.finals) == 6
    for stage in ("base", "dataset", "quantize", "export"):
        assert len(plan.keys(stage)) == 1, stage
    for stage in ("finetune", "adapter", "generate"):
        assert len(plan.keys(stage)) == 6, stage


def test_an_override_that_changes_nothing_keeps_every_key():
    default = build_plan().finals[0]
    same = build_plan({"lora.r": 8, "train.lr": 1e-3}).finals[0]
    assert {k: n.key for k, n in default.items()} == {k: n.key for k, n in same.items()}


def test_lora_only_change_keeps_quantize_and_export_keys():
    a, b = build_plan().finals[0], build_plan({"train.lr": 3e-4}).finals[0]
    assert [s for s in a if a[s].key != b[s].key] == ["finetune", "adapter", "generate", "evaluate", "register"]


@pytest.mark.parametrize("override,first", [
    ("model.template=<|user|>\\n{prompt}<|end|>\\n<|assistant|>\\n{response}<|end|><|endoftext|>", "dataset"),
    ("model.cpu_accuracy_level=4", "export"),  # SmolLM2's preset sets it (to 1)
    ("evaluate.speed.enabled=false", "evaluate"),  # quality decodes nothing: its key stays
])
def test_a_model_presets_default_for_another_stage_rekeys_from_that_stage(override, first):
    """model.template and model.cpu_accuracy_level are read through data.template and
    export.accuracy_level: the base's key does not move, the stage that reads them does."""
    preset = ["experiment=smollm2"] if override.startswith("model.cpu_") else []
    a, b = build_plan(overrides=preset).finals[0], build_plan(overrides=[*preset, override]).finals[0]
    changed = [s for s in a if a[s].key != b[s].key]
    assert changed and changed[0] == first and a["base"].key == b["base"].key


def test_key_covers_the_code_a_stage_imports():
    files = build_plan().finals[0]["finetune"].code["files"]
    assert "src/modelmake/stages/finetune.py" in files and "src/modelmake/models/awq_fixes.py" in files
    assert "src/modelmake/models/onnx_lora.py" not in files  # not imported by finetune
    assert not [f for f in files if "/core/" in f or "/graph/" in f or "/recipe/" in f]  # machinery: never keyed
    libs = build_plan().finals[0]["finetune"].code["libraries"]
    assert set(libs) >= {"torch", "peft", "autoawq", "transformers"}


@pytest.mark.parametrize("preset", options("sweep"))
def test_every_sweep_preset_expands_to_several_points(preset):
    plan = build_plan(overrides=[f"sweep={preset}"])
    assert len(plan.finals) > 1 and len(plan.keys("quantize")) == 1


def test_unknown_sweep_preset_is_refused():
    with pytest.raises(ModelmakeError, match="no sweep preset"):
        build_plan(overrides=["sweep=nope"])


def test_report_is_one_node_over_every_point():
    plan = build_plan(overrides=["lora.r=4,8"])
    assert len(plan.report.inputs) == 6  # evaluate, finetune, generate of each point
    assert plan.report.key != build_plan(overrides=["lora.r=4,16"]).report.key
    assert plan.report.key == build_plan(overrides=["lora.r=4,8", "threads=1"]).report.key


def test_a_command_names_only_the_overrides_its_artifact_depends_on():
    from modelmake.recipe import stage_command

    point = build_plan(overrides=["train.steps=20", "generate.max_new_tokens=9", "threads=1"]).finals[0]
    assert stage_command(point["base"]) == "python -m modelmake stage base"
    assert stage_command(point["quantize"]) == "python -m modelmake stage quantize"
    assert stage_command(point["finetune"]) == "python -m modelmake stage finetune train.steps=20"
    assert stage_command(point["generate"]) == \
        "python -m modelmake stage generate train.steps=20 generate.max_new_tokens=9"
