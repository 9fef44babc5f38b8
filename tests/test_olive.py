"""`modelmake olive`: an Olive workflow config in each of its layouts, and the Olive lab's commands,
become exactly the overrides a user would type by hand: the same artifact keys at every stage, and
the same set of Hydra keys. Every setting of a config gets a row; each bad input is one line and
writes nothing. One imported preset builds the tiny chain (slow).

The configs below follow their sources (microsoft/Olive, microsoft/Phi-3CookBook; see the paths in
src/modelmake/olive.py), with the data files local and the step counts small.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from helpers.project import copy_project, run
from modelmake import olive
from modelmake.core.errors import ModelmakeError
from modelmake.recipe import build_plan

REV = "0123456789abcdef0123456789abcdef01234567"
PHI3_TEMPLATE = "<|user|>\n{prompt}<|end|>\n<|assistant|>\n{response}<|end|>"
TONES = ["sad", "joy", "fear", "surprise"]


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    """A project copy whose conf/ receives the imported experiments (never the real conf/)."""
    return copy_project(tmp_path_factory.mktemp("olive") / "modelmake")


@pytest.fixture
def conf(copy, monkeypatch) -> Path:
    """Plans compose from the copy's conf/ (where `experiment=NAME` was written); CUDA exports plan
    on this CPU machine (the key does not depend on the runtime being installed)."""
    import modelmake.graph.config as config
    import modelmake.recipe.checks as checks

    monkeypatch.setattr(config, "CONF_DIR", copy / "conf")
    monkeypatch.setattr(checks, "need_runtime", lambda provider: None)
    config.compose.cache_clear()
    yield copy / "conf"
    config.compose.cache_clear()  # no config composed without the runtime check outlives the test


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """The folder the Olive configs sit in, with the data they name beside them."""
    root = tmp_path_factory.mktemp("olive-configs")
    (root / "dataset").mkdir()
    phrases = [{"phrase": f"phrase number {i} about the weather", "tone": TONES[i % 4]} for i in range(40)]
    (root / "dataset" / "dataset-classification.json").write_text("".join(json.dumps(r) + "\n" for r in phrases))
    (root / "data").mkdir()
    src = Path(__file__).resolve().parents[1] / "data" / "travel_sample.jsonl"
    (root / "data" / "data_sample_travel.jsonl").write_text(src.read_text())
    return root


def write(folder: Path, name: str, tree: dict) -> Path:
    path = folder / name
    path.write_text(json.dumps(tree, indent=2))
    return path


def keys(overrides: list[str]) -> dict[str, str]:
    return {stage: node.key for stage, node in build_plan(overrides=overrides).finals[0].items()}


def same_as_typed(mapped: olive.Mapped, name: str, typed: list[str]) -> None:
    """The import is what a user would have typed: the same Hydra keys, and every artifact key equal."""
    assert sorted(o.split("=", 1)[0] for o in mapped.overrides()) == sorted(o.split("=", 1)[0] for o in typed)
    assert keys([f"experiment={name}"]) == keys(typed)


def every_setting_has_a_row(tree: dict, mapped: olive.Mapped) -> None:
    """Nothing dropped silently: each leaf of the config is a row, or inside a section that is one."""
    origins = {r.origin for r in mapped.rows}
    for path, _ in olive.leaves(tree):
        assert any(olive.show(path[:n]) in origins for n in range(len(path), 0, -1)), olive.show(path)


# --------------------------------------------------------------------------------------------------
# The three layouts


def oldest(data: str = "dataset/dataset-classification.json") -> dict:
    """Olive <= 0.4: PyTorchModel + hf_config, data_configs a dict with params_config/component_kwargs,
    passes under `config`, engine.execution_providers (Phi-3CookBook
    code/04.Finetuning/olive-ort-example/phrase-classification.json; md/04.Fine-tuning/FineTuning_MicrosoftOlive.md)."""
    return {
        "$schema": "https://microsoft.github.io/Olive/schema.json",
        "input_model": {"type": "PyTorchModel", "config": {"hf_config": {
            "model_name": "microsoft/Phi-3-mini-4k-instruct", "task": "text-generation",
            "from_pretrained_args": {"trust_remote_code": True}}}},
        "systems": {"local_system": {"type": "LocalSystem", "config": {"accelerators": [
            {"device": "gpu", "execution_providers": ["CUDAExecutionProvider"]}]}}},
        "data_configs": {"dataset_default_train": {
            "name": "dataset_default_train", "type": "HuggingfaceContainer",
            "params_config": {
                "data_name": "json", "data_files": data, "split": "train",
                "component_kwargs": {"pre_process_data": {
                    "dataset_type": "corpus", "text_cols": ["phrase", "tone"],
                    "text_template": "<|user|>\n{phrase}<|end|>\n<|assistant|>\n{tone}<|end|>",
                    "corpus_strategy": "join", "source_max_len": 1024, "pad_to_max_len": False,
                    "use_attention_mask": False}}}}},
        "passes": {
            "lora": {"type": "LoRA", "config": {
                "target_modules": ["o_proj", "qkv_proj"], "lora_r": 64, "lora_alpha": 64, "lora_dropout": 0.1,
                "train_data_config": "dataset_default_train", "eval_dataset_size": 0.3,
                "training_args": {"seed": 0, "data_seed": 42, "per_device_train_batch_size": 1,
                                  "per_device_eval_batch_size": 1, "gradient_accumulation_steps": 4,
                                  "gradient_checkpointing": False, "learning_rate": 0.0001, "max_steps": 150,
                                  "evaluation_strategy": "steps", "adam_beta2": 0.999, "max_grad_norm": 0.3}}},
            "merge": {"type": "MergeAdapterWeights"},
            "mb": {"type": "ModelBuilder", "config": {"precision": "int4"}}},
        "engine": {"search_strategy": False, "execution_providers": ["CUDAExecutionProvider"],
                   "cache_dir": "cache", "output_dir": "models", "host": "local_system", "target": "local_system"},
    }


def middle() -> dict:
    """Olive 0.5-0.6: HfModel under `config`, data_configs a list with load_dataset_config.params and
    pre_process_data_config.params, an AzureML system (Phi-3CookBook md/03.FineTuning/FineTuning_MicrosoftOlive.md,
    the "Fine-tuning Phi-3 with Microsoft Olive" guide; Olive examples/llama2/llama2_qlora.json at 076e792^)."""
    return {
        "input_model": {"type": "HfModel", "config": {
            "model_path": "microsoft/Phi-3.5-mini-instruct", "task": "text-generation",
            "load_kwargs": {"trust_remote_code": True, "revision": REV}}},
        "systems": {"aml": {"type": "AzureML", "config": {
            "accelerators": ["gpu"], "hf_token": True, "aml_compute": "gpu-cluster",
            "aml_docker_config": {"base_image": "mcr.microsoft.com/azureml/openmpi4.1.0-cuda11.8", "conda_file_path":
                                  "conda.yaml"}}}},
        "data_configs": [{
            "name": "dataset_default_train", "type": "HuggingfaceContainer",
            "load_dataset_config": {"params": {"data_name": "json", "data_files": "dataset/dataset-classification.json",
                                               "split": "train"}},
            "pre_process_data_config": {"params": {
                "dataset_type": "corpus", "text_cols": ["phrase", "tone"],
                "text_template": "### Text: {phrase}\n### The tone is:\n{tone}", "corpus_strategy": "join",
                "source_max_len": 2048, "pad_to_max_len": False, "use_attention_mask": False}}}],
        "passes": {
            "lora": {"type": "LoRA", "config": {
                "target_modules": ["o_proj", "qkv_proj"], "double_quant": True, "lora_r": 64, "lora_alpha": 64,
                "lora_dropout": 0.1, "train_data_config": "dataset_default_train", "eval_dataset_size": 0.3,
                "training_args": {"seed": 0, "data_seed": 42, "per_device_train_batch_size": 1,
                                  "per_device_eval_batch_size": 1, "gradient_accumulation_steps": 4,
                                  "gradient_checkpointing": False, "learning_rate": 0.0001, "num_train_epochs": 3,
                                  "max_steps": 10, "logging_steps": 10, "evaluation_strategy": "steps",
                                  "eval_steps": 187, "group_by_length": True, "adam_beta2": 0.999,
                                  "max_grad_norm": 0.3}}},
            "merge_adapter_weights": {"type": "MergeAdapterWeights"},
            "builder": {"type": "ModelBuilder", "config": {"precision": "int4"}}},
        "engine": {"log_severity_level": 0, "host": "aml", "target": "aml", "search_strategy": False,
                   "execution_providers": ["CUDAExecutionProvider"],
                   "cache_dir": "../model-cache/models/phi3-finetuned/cache",
                   "output_dir": "../model-cache/models/phi3-finetuned"},
    }


def current() -> dict:
    """Olive >= 0.7, flat: the lab's recipe as one workflow (AWQ, LoRA, ModelBuilder, ExtractAdapters;
    Olive examples/phi3/phi3_template.json at 78f7712^ for the layout)."""
    return {
        "input_model": {"type": "HfModel", "model_path": "microsoft/Phi-3.5-mini-instruct"},
        "systems": {"local_system": {"type": "LocalSystem", "accelerators": [
            {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": [{
            "name": "travel_train", "type": "HuggingfaceContainer",
            "load_dataset_config": {"data_name": "json", "data_files": "data/data_sample_travel.jsonl",
                                    "split": "train"},
            "pre_process_data_config": {"text_template": PHI3_TEMPLATE, "max_seq_len": 256}}],
        "passes": {
            "awq": {"type": "AutoAWQQuantizer", "q_group_size": 64},
            "lora": {"type": "LoRA", "train_data_config": "travel_train", "r": 8, "alpha": 16,
                     "target_modules": ["qkv_proj", "o_proj"],
                     "training_args": {"learning_rate": 0.001, "max_steps": 4, "per_device_train_batch_size": 2,
                                       "gradient_accumulation_steps": 2, "warmup_steps": 1, "weight_decay": 0.01,
                                       "lr_scheduler_type": "cosine", "seed": 1}},
            "builder": {"type": "ModelBuilder", "precision": "int4", "int4_accuracy_level": 4},
            "extract": {"type": "ExtractAdapters", "save_format": "onnx_adapter"}},
        "output_dir": "models/phi3-travel", "cache_dir": "cache", "host": "local_system", "target": "local_system",
        "log_severity_level": 1,
    }


def typed_oldest(files: Path) -> list[str]:
    return ["model=phi35_mini", "model.source=microsoft/Phi-3-mini-4k-instruct", "model.name=phi-3-mini-4k-instruct",
            "model.revision=main", "quantize=awq_g64", "export=int4_cuda_merged", "resources=gpu_node",
            f"data.path={files}/dataset/dataset-classification.json",
            "data.template=<|user|>\\n{phrase}<|end|>\\n<|assistant|>\\n{tone}<|end|>",
            "data.response_marker=<|assistant|>\\n", "data.eval_fraction=0.3", "train.max_seq_len=1024",
            "lora.target_modules=[o_proj,qkv_proj]", "lora.r=64", "lora.alpha=64", "lora.dropout=0.1",
            "train.seed=0", "train.batch_size=1", "train.grad_accum_steps=4", "train.lr=0.0001", "train.steps=150",
            "train.max_grad_norm=0.3", "train.warmup_steps=5", "export.precision=int4"]


def typed_middle(files: Path) -> list[str]:
    return ["model=phi35_mini", f"model.revision={REV}", "quantize=awq_g64", "export=int4_cuda_merged",
            "resources=gpu_node",
            f"data.path={files}/dataset/dataset-classification.json",
            "data.template=### Text: {phrase}\\n### The tone is:\\n{tone}",
            "data.response_marker=### The tone is:\\n", "data.eval_fraction=0.3", "train.max_seq_len=2048",
            "lora.target_modules=[o_proj,qkv_proj]", "lora.r=64", "lora.alpha=64", "lora.dropout=0.1",
            "train.seed=0", "train.batch_size=1", "train.grad_accum_steps=4", "train.lr=0.0001", "train.steps=10",
            "train.eval_every=187", "train.max_grad_norm=0.3", "train.warmup_steps=1", "export.precision=int4"]


def typed_current(files: Path) -> list[str]:
    return ["model=phi35_mini", "model.revision=main", "quantize=awq_g64", "quantize.group_size=64",
            "export=int4_cpu", f"data.path={files}/data/data_sample_travel.jsonl",
            f"data.template={PHI3_TEMPLATE.encode('unicode_escape').decode()}",
            "data.response_marker=<|assistant|>\\n", "train.max_seq_len=256", "lora.r=8", "lora.alpha=16",
            "lora.dropout=0.05", "lora.target_modules=[qkv_proj,o_proj]", "train.lr=0.001", "train.steps=4",
            "train.batch_size=2", "train.grad_accum_steps=2", "train.warmup_steps=1", "train.weight_decay=0.01",
            "train.seed=1", "export.precision=int4", "export.accuracy_level=4"]


LAYOUTS = {"oldest": (oldest, typed_oldest), "middle": (middle, typed_middle), "current": (current, typed_current)}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_imports_to_what_a_user_would_type(layout, conf, files):
    make, typed = LAYOUTS[layout]
    tree = make()
    path, mapped = olive.import_config(write(files, f"{layout}.json", tree), f"olive_{layout}", olive.Options(),
                                       "modelmake olive import", conf_dir=conf)
    assert path == conf / "experiment" / f"olive_{layout}.yaml"
    same_as_typed(mapped, f"olive_{layout}", typed(files))
    every_setting_has_a_row(tree, mapped)
    text = path.read_text()
    assert text.startswith("# @package _global_\n") and f"#   modelmake build experiment=olive_{layout}" in text


def test_yaml_config_imports_as_its_json(conf, files):
    import yaml

    path = files / "current.yaml"
    path.write_text(yaml.safe_dump(current()))
    _, mapped = olive.import_config(path, "olive_yaml", olive.Options(), "modelmake olive import", conf_dir=conf)
    same_as_typed(mapped, "olive_yaml", typed_current(files))


def test_what_differs_is_said(conf, files):
    """The rows a user needs to read: the same words, other training."""
    _, mapped = olive.import_config(write(files, "o2.json", oldest()), "olive_o2", olive.Options(), "x",
                                    conf_dir=conf)
    rows = {r.origin: r for r in mapped.rows}
    pre = "data_configs.dataset_default_train.params_config.component_kwargs.pre_process_data"
    assert rows[f"{pre}.corpus_strategy"].status == olive.DIFFERS
    assert "packs the records" in rows[f"{pre}.corpus_strategy"].note and "response only" in \
        rows[f"{pre}.corpus_strategy"].note
    merge = rows["passes.merge.type"]
    assert merge.status == olive.DIFFERS and "export.merge=rtn" in merge.note
    assert merge.became == ["export=int4_cuda_merged"]
    assert mapped.values["export"] == "int4_cuda_merged" and mapped.until == "merged"
    assert rows["input_model.config.hf_config.from_pretrained_args.trust_remote_code"].status == olive.NOT_TAKEN
    assert "model.trust_remote_code" not in mapped.values
    assert any(r.status == olive.ADDED and "quantize=awq_g64" in r.became for r in mapped.rows)
    assert "lr_scheduler_type" in " ".join(r.origin for r in mapped.rows if r.status == olive.NOT_TAKEN)


# --------------------------------------------------------------------------------------------------
# The lab's commands


LAB = [  # Phi-3CookBook md/03.FineTuning/olive-lab/readme.md, then scripts/flow.sh's generate-adapter
    ["olive", "quantize", "--model_name_or_path", "microsoft/Phi-3.5-mini-instruct", "--trust_remote_code",
     "--algorithm", "awq", "--output_path", "models/phi/awq", "--log_level", "1"],
    ["olive", "finetune", "--method", "lora", "--model_name_or_path", "models/phi/awq",
     "--data_files", "data/data_sample_travel.jsonl", "--data_name", "json",
     "--text_template", "<|user|>\\n{prompt}<|end|>\\n<|assistant|>\\n{response}<|end|>", "--max_steps", "100",
     "--output_path", "./models/phi/ft", "--log_level", "1"],
    ["olive", "auto-opt", "--model_name_or_path", "models/phi/ft/model", "--adapter_path", "models/phi/ft/adapter",
     "--device", "cpu", "--provider", "CPUExecutionProvider", "--use_ort_genai", "--output_path",
     "models/phi/onnx-ao", "--log_level", "1"],
    ["olive", "generate-adapter", "--model_name_or_path", "models/phi/onnx-ao", "--output_path", "models/phi/ft-ready",
     "--log_level", "1"],
]


def typed_lab(files: Path) -> list[str]:
    """The lab by hand: Olive's CLI defaults included (lora_r 64, lora_alpha 16, max_seq_len 1024,
    learning_rate 2e-4, warmup_ratio 0.03, AWQ group 128); auto-opt's fp32 keeps AWQ's int4 weights."""
    return ["model=phi35_mini", "model.revision=main", "quantize=awq_g64", "quantize.group_size=128",
            f"data.path={files}/data/data_sample_travel.jsonl",
            f"data.template={PHI3_TEMPLATE.encode('unicode_escape').decode()}",
            "data.response_marker=<|assistant|>\\n", "train.max_seq_len=1024", "train.steps=100",
            "train.lr=0.0002", "train.warmup_steps=3", "lora.r=64", "lora.alpha=16", "lora.dropout=0.05",
            "export=int4_cpu", "export.precision=int4"]


def test_the_lab_commands_translate_to_what_a_user_would_type(files):
    mapped = olive.translate_commands(LAB, olive.Options(base=files))
    assert mapped.until == "adapter"
    assert sorted(o.split("=", 1)[0] for o in mapped.overrides()) == \
        sorted(o.split("=", 1)[0] for o in typed_lab(files))
    assert keys(mapped.overrides()) == keys(typed_lab(files))
    line = olive.build_line(mapped)
    assert line[:4] == ["modelmake", "build", "--until", "adapter"]
    packing = next(r for r in mapped.rows if "strategy (not set" in r.origin)  # Olive's default: join
    assert packing.status == olive.DIFFERS and "response only" in packing.note
    origins = " ".join(r.origin for r in mapped.rows)
    for cmd in LAB:  # every flag the user typed has its row
        for word in cmd:
            if word.startswith("--"):
                assert f"olive {cmd[1]} {word}" in origins, (cmd[1], word)


def test_each_lab_command_alone(files):
    """One command at a time: the stage it reaches, what it needs from the others said."""
    q = olive.translate_commands([LAB[0]], olive.Options(base=files))
    assert q.until == "quantize" and q.values["quantize.group_size"] == 128
    assert keys(q.overrides())["quantize"] == keys(typed_lab(files))["quantize"]
    q = olive.translate_commands([[*LAB[0], "--data_name", "json", "--data_files", "data/data_sample_travel.jsonl"]],
                                 olive.Options(base=files))
    calib = [r for r in q.rows if r.origin.startswith("olive quantize --data")]
    assert len(calib) == 2 and all("calibrates on the training split" in r.note for r in calib)
    assert "data.path" not in q.values  # AWQ's calibration data is not the fine-tuning data
    ft = ["olive", "finetune", "--model_name_or_path", "microsoft/Phi-3.5-mini-instruct", *LAB[1][6:]]
    f = olive.translate_commands([ft], olive.Options(base=files))
    assert f.until == "finetune" and f.values["quantize"] == "awq_g64"  # modelmake quantizes first
    assert any(r.status == olive.ADDED and "quantize=awq_g64" in r.became for r in f.rows)
    with pytest.raises(ModelmakeError, match="generate-adapter reads an ONNX model"):
        olive.translate_commands([LAB[3]], olive.Options(base=files))


def test_the_lab_script_translates_like_its_commands(files):
    """flow.sh as the cookbook ships it: backslash continuations, echo lines skipped."""
    script = files / "flow.sh"
    script.write_text("\n".join(['echo -e "\\n>>>>>> running awq quantization >>>>>>>>\\n"', ""] + [
        " \\\n    ".join(shlex.quote(w) for w in cmd) for cmd in LAB]) + "\n")
    commands, skipped = olive.script_commands(script)
    assert commands == LAB and len(skipped) == 1 and "echo" in skipped[0]


def test_translate_runs_the_build_line(files, monkeypatch):
    """--run builds exactly the printed line: the overrides, up to the last stage the commands reach."""
    from modelmake import cli

    seen = {}
    monkeypatch.setattr(cli, "run_snakemake", lambda cmd, view=None: seen.setdefault("cmd", cmd) and 0)
    monkeypatch.chdir(files)
    argv = ["olive", "translate", "--run", "--", *LAB[0], "--", *LAB[1], "--", *LAB[2], "--", *LAB[3]]
    assert cli.main(argv) == 0
    plan = build_plan(overrides=typed_lab(files))
    cmd = seen["cmd"]
    assert plan.targets("adapter")[0] in cmd
    assert json.loads(cmd[-1].split("=", 1)[1]) == olive.translate_commands(LAB, olive.Options(base=files)).overrides()


def test_olive_text_template_escapes_are_read_as_olive_reads_them(files):
    """`--text_template` is unescaped as Olive's unescaped_str does; a JSON config's `\\n` is JSON's;
    a literal backslash in a config stays literal in the experiment."""
    ft = ["olive", "finetune", "-m", "microsoft/Phi-3.5-mini-instruct", "--data_files",
          "data/data_sample_travel.jsonl", "-d", "json", "--text_template", "Q: {prompt}\\tA: {response}",
          "--max_steps", "3"]
    m = olive.translate_commands([ft], olive.Options(base=files))
    assert m.values["data.template"] == "Q: {prompt}\tA: {response}" and m.values["data.response_marker"] == "\tA: "


def test_literal_backslash_survives_the_experiment_file(conf, files):
    from modelmake.recipe import compose

    tree = current()
    tree["data_configs"][0]["pre_process_data_config"]["text_template"] = "Q\\n: {prompt} A\\: {response}"
    olive.import_config(write(files, "bs.json", tree), "olive_bs", olive.Options(), "x", conf_dir=conf)
    cfg = compose(("experiment=olive_bs",))
    assert cfg.data.template == "Q\\n: {prompt} A\\: {response}" and cfg.data.response_marker == " A\\: "


# --------------------------------------------------------------------------------------------------
# Mappings one by one


def test_llama3_template_marker_is_the_assistant_header():
    t = ("<|start_header_id|>user<|end_header_id|>\n{phrase}<|eot_id|><|start_header_id|>assistant"
         "<|end_header_id|>\n{tone}")
    assert olive.derive_marker(t) == "<|start_header_id|>assistant<|end_header_id|>\n"
    assert olive.derive_marker("### Text: {phrase}\n### The tone is:\n{tone}") == "### The tone is:\n"


def test_trust_remote_code_is_kept_only_when_confirmed(files):
    tree = current()
    tree["input_model"]["load_kwargs"] = {"trust_remote_code": True}
    off = olive.map_config(tree, "c.json", olive.Options(base=files))
    assert "model.trust_remote_code" not in off.values and not off.warnings
    on = olive.map_config(tree, "c.json", olive.Options(base=files, trust_remote_code=True))
    assert on.values["model.trust_remote_code"] is True
    assert any("trust_remote_code=true" in w for w in on.warnings)


def test_hub_revision_and_an_other_hub_model(files):
    tree = current()
    tree["input_model"] = {"type": "HfModel", "model_path": "https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct"}
    m = olive.map_config(tree, "c.json", olive.Options(base=files, revision=REV))
    assert {k: m.values[k] for k in ("model", "model.source", "model.name", "model.revision")} == \
        {"model": "phi35_mini", "model.source": "Qwen/Qwen2.5-0.5B-Instruct", "model.name": "qwen2.5-0.5b-instruct",
         "model.revision": REV}
    keys(m.overrides())  # plans: a hub id needs no download to be keyed


def test_azureml_registry_model_is_a_documented_untested_source(files):
    """Mapped to a local folder to download into, with the command; not built by any test here."""
    tree = current()
    tree["input_model"] = {"type": "HfModel",
                           "model_path": "azureml://registries/azureml/models/Phi-3.5-mini-instruct/versions/4"}
    m = olive.map_config(tree, "c.json", olive.Options(base=files))
    assert m.values["model.source"] == "models/Phi-3.5-mini-instruct" and m.values["model.revision"] is None
    assert any("az ml model download --name Phi-3.5-mini-instruct --version 4 --registry-name azureml" in w
               for w in m.warnings)
    registry = {"type": "azureml_registry_model", "config": {  # the guide's Azure ML catalog model
        "name": "microsoft/Phi-3-mini-4k-instruct", "registry_name": "azureml-msr", "version": "11"}}
    tree["input_model"] = {"type": "PyTorchModel", "config": {
        "model_path": registry, "model_file_format": "PyTorch.MLflow",
        "hf_config": {"model_name": "microsoft/Phi-3-mini-4k-instruct"}}}
    m = olive.map_config(tree, "c.json", olive.Options(base=files))
    assert m.values["model.source"] == "models/microsoft/Phi-3-mini-4k-instruct"


def test_local_model_folder(files, tmp_path):
    tree = current()
    (tmp_path / "phi").mkdir()
    tree["input_model"] = {"type": "HfModel", "model_path": str(tmp_path / "phi")}
    m = olive.map_config(tree, "c.json", olive.Options(base=files))
    assert (m.values["model.source"], m.values["model.revision"]) == (str(tmp_path / "phi"), None)


def test_substitute_model_for_a_cpu_try(files):
    m = olive.map_config(oldest(), "c.json", olive.Options(base=files, model="tiny_phi3", cpu=True))
    assert m.values["model"] == "tiny_phi3" and "model.source" not in m.values and m.values["export"] == "int4_merged"
    assert "resources" not in m.values
    assert keys(m.overrides())


def test_epochs_become_steps_from_the_training_split(files):
    from modelmake.data.records import read_records, split

    tree = current()
    args = tree["passes"]["lora"]["training_args"]
    del args["max_steps"]
    args["num_train_epochs"] = 2
    m = olive.map_config(tree, "c.json", olive.Options(base=files))
    records = read_records(files / "data" / "data_sample_travel.jsonl", ["prompt", "response"])
    train, _ = split(records, records, 0.1, 0)  # the dataset stage's split (data.eval_fraction, data.seed)
    assert m.values["train.steps"] == 2 * -(-len(train) // 4)  # 2 epochs x ceil(records / (batch 2 x accum 2))
    del args["num_train_epochs"]  # neither: Transformers' 3 epochs
    m = olive.map_config(tree, "c.json", olive.Options(base=files))
    assert m.values["train.steps"] == 3 * -(-len(train) // 4)
    assert any(r.status == olive.DEFAULT and "num_train_epochs 3" in r.note for r in m.rows)


def test_eval_split_from_a_record_count_and_from_a_train_slice(files):
    tree = oldest()
    tree["passes"]["lora"]["config"]["eval_dataset_size"] = 10
    m = olive.map_config(tree, "c.json", olive.Options(base=files))
    assert m.values["data.eval_fraction"] == 0.25  # 10 of 40 records
    tree = current()
    tree["data_configs"][0]["load_dataset_config"]["split"] = "train[:80%]"
    m = olive.map_config(tree, "c.json", olive.Options(base=files))
    assert m.values["data.eval_fraction"] == pytest.approx(0.2)


def test_qlora_becomes_lora_on_the_awq_base_and_says_so(files):
    tree = current()
    tree["passes"]["lora"] |= {"type": "QLoRA", "double_quant": True, "quant_type": "nf4", "compute_dtype": "bfloat16"}
    m = olive.map_config(tree, "c.json", olive.Options(base=files))
    row = next(r for r in m.rows if r.origin == "passes.lora.type")
    assert row.status == olive.DIFFERS and "AWQ int4 base" in row.note
    for k in ("double_quant", "quant_type", "compute_dtype"):
        assert "AWQ int4 base" in next(r for r in m.rows if r.origin == f"passes.lora.{k}").note


def test_deepspeed_and_search_are_not_taken_with_a_reason(files):
    tree = current()
    tree["passes"]["lora"]["training_args"]["deepspeed"] = {"zero_optimization": {"stage": 2}}
    tree["search_strategy"] = {"execution_order": "joint", "sampler": "tpe"}
    m = olive.map_config(tree, "c.json", olive.Options(base=files))
    notes = {r.origin: r.note for r in m.rows if r.status == olive.NOT_TAKEN}
    assert "DeepSpeed" in notes["passes.lora.training_args.deepspeed.zero_optimization.stage"]
    assert "Optuna" in notes["search_strategy.sampler"]


def test_gradient_clipping_off(files):
    tree = current()
    tree["passes"]["lora"]["training_args"]["max_grad_norm"] = 0
    m = olive.map_config(tree, "c.json", olive.Options(base=files))
    assert m.values["train.max_grad_norm"] is None and "train.max_grad_norm=null" in m.overrides()


# --------------------------------------------------------------------------------------------------
# Bad input: one line each, nothing written


def refused(conf: Path, path: Path, name: str, match: str, **options) -> ModelmakeError:
    with pytest.raises(ModelmakeError, match=match) as e:
        olive.import_config(path, name, olive.Options(**options), "x", conf_dir=conf)
    assert "\n" not in str(e.value), str(e.value)
    assert not (conf / "experiment" / f"{name}.yaml").exists()
    assert not list((conf / "experiment").glob(f".{name}.yaml.*"))  # no temporary left either
    return e.value


def test_not_json_names_file_line_and_column(conf, files):
    bad = files / "bad.json"
    bad.write_text('{\n  "input_model": {"type": "HfModel",\n    "model_path": "x" "y"}\n}\n')
    refused(conf, bad, "olive_bad", r"bad\.json:3:23: not valid JSON")
    bad = files / "bad.yaml"
    bad.write_text("input_model:\n  type: HfModel\n  model_path: [unclosed\npasses: {}\n")
    refused(conf, bad, "olive_bad", r"bad\.yaml:4:\d+: not valid YAML")
    bad = files / "list.json"
    bad.write_text("[1, 2]")
    refused(conf, bad, "olive_bad", "not an Olive workflow config")


def test_no_input_model(conf, files):
    tree = current()
    del tree["input_model"]
    refused(conf, write(files, "nomodel.json", tree), "olive_nomodel", "no input_model")
    tree["input_model"] = {"type": "PyTorchModel", "config": {"model_script": "user_script.py"}}
    refused(conf, write(files, "script.json", tree), "olive_script", "names only .*model_script.*no config-supplied")


def test_user_script_loader_is_named(conf, files):
    """Olive examples/llama2/llama2_qlora.json at 076e792^: a loader registered by user_script.py."""
    tree = middle()
    tree["data_configs"][0] |= {"user_script": "user_script.py"}
    tree["data_configs"][0]["load_dataset_config"]["type"] = "tiny_code_dataset"
    e = refused(conf, write(files, "script.json", tree), "olive_us", "'tiny_code_dataset' is a loader from user_script")
    assert "load_dataset_config.type" in str(e) and "no config-supplied code" in str(e)
    tree = oldest()  # the oldest layout's components
    tree["data_configs"]["dataset_default_train"] |= {"user_script": "user_script.py",
                                                     "components": {"load_dataset": {"type": "load_tiny_code_dataset"}}}
    refused(conf, write(files, "script2.json", tree), "olive_us",
            "'load_tiny_code_dataset' is a loader from user_script")


def test_pass_without_equivalent_is_listed_and_strict_refuses(conf, files):
    tree = current()
    tree["passes"] = {"conversion": {"type": "OnnxConversion", "target_opset": 17}, **tree["passes"],
                      "tune": {"type": "OrtSessionParamsTuning", "io_bind": True}}
    _, m = olive.import_config(write(files, "extra.json", tree), "olive_extra", olive.Options(), "x", conf_dir=conf)
    none = [r.origin for r in m.rows if r.status == olive.NO_EQUIVALENT]
    assert none == ["passes.conversion.type", "passes.tune.type"]
    assert "passes.tune.io_bind" in {r.origin for r in m.rows if r.status == olive.NOT_TAKEN}
    e = refused(conf, write(files, "extra.json", tree), "olive_extra2", "--strict: no modelmake equivalent",
                strict=True)
    assert "OnnxConversion" in str(e) and "OrtSessionParamsTuning" in str(e)


def test_hub_dataset_and_json_array_are_refused(conf, files):
    tree = current()
    tree["data_configs"][0]["load_dataset_config"] = {"data_name": "nampdn-ai/tiny-codes", "split": "train"}
    refused(conf, write(files, "hub.json", tree), "olive_hub", "no data_files .*a hub dataset.*JSONL")
    (files / "array.json").write_text(json.dumps([{"prompt": "a", "response": "b"}]))
    tree["data_configs"][0]["load_dataset_config"] = {"data_name": "json", "data_files": "array.json"}
    refused(conf, write(files, "arr.json", tree), "olive_arr", "one JSON array: modelmake reads JSON Lines")


def test_the_name_defaults_to_the_workflow_id_or_the_file_name(conf, files):
    path, _ = olive.import_config(write(files, "my config.v2.json", current()), None, olive.Options(), "x",
                                  conf_dir=conf)
    assert path.name == "my_config_v2.yaml"
    tree = current() | {"workflow_id": "phi3-travel"}
    path, _ = olive.import_config(write(files, "w.json", tree), None, olive.Options(), "x", conf_dir=conf)
    assert path.name == "phi3-travel.yaml"
    with pytest.raises(ModelmakeError, match="--name 'a/b': letters, digits"):
        olive.import_config(write(files, "w.json", tree), "a/b", olive.Options(), "x", conf_dir=conf)


def test_an_existing_experiment_is_not_replaced_unless_forced(conf, files):
    path = write(files, "cur.json", current())
    olive.import_config(path, "olive_twice", olive.Options(), "x", conf_dir=conf)
    before = (conf / "experiment" / "olive_twice.yaml").read_text()
    with pytest.raises(ModelmakeError, match="exists; choose another --name or pass --force"):
        olive.import_config(path, "olive_twice", olive.Options(), "y", conf_dir=conf)
    tree = current()
    del tree["input_model"]
    with pytest.raises(ModelmakeError, match="no input_model"):  # a refusal with --force leaves the old file
        olive.import_config(write(files, "cur2.json", tree), "olive_twice", olive.Options(), "y", conf_dir=conf,
                            force=True)
    assert (conf / "experiment" / "olive_twice.yaml").read_text() == before


@pytest.mark.parametrize("argv,match", [
    (["olive", "benchmark", "-m", "x"], "olive benchmark: no modelmake translation"),
    (["olive", "run", "--config", "x.json"], "`modelmake olive import FILE`"),
    (["olive", "finetune", "-m", "microsoft/Phi-3.5-mini-instruct", "--lora_rank", "8"], "unknown flag --lora_rank"),
    (["olive", "auto-opt", "-m", "microsoft/Phi-3.5-mini-instruct", "--max_steps", "8"], "unknown flag --max_steps"),
    (["olive", "quantize", "-m", "microsoft/Phi-3.5-mini-instruct", "--algorithm"], "--algorithm needs a value"),
    (["python", "-m", "olive"], "expected an olive command"),
])
def test_unknown_olive_command_or_flag_is_one_line(argv, match, files):
    with pytest.raises(ModelmakeError, match=match) as e:
        olive.translate_commands([argv], olive.Options(base=files))
    assert "\n" not in str(e.value)


def test_a_training_argument_flag_is_taken_by_finetune(files):
    ft = ["olive", "finetune", "-m", "microsoft/Phi-3.5-mini-instruct", "--data_files",
          "data/data_sample_travel.jsonl", "-d", "json", "--text_template", PHI3_TEMPLATE, "--max_steps", "7",
          "--learning_rate", "3e-4", "--gradient_accumulation_steps", "2", "--report_to", "none"]
    m = olive.translate_commands([ft], olive.Options(base=files))
    assert (m.values["train.lr"], m.values["train.grad_accum_steps"], m.values["train.steps"]) == (3e-4, 2, 7)
    assert any(r.origin == "olive finetune --report_to none" and r.status == olive.NOT_TAKEN for r in m.rows)


def test_a_second_chain_or_a_foreign_adapter_is_refused(files):
    with pytest.raises(ModelmakeError, match="not the output of an earlier command"):
        olive.translate_commands([LAB[0], ["olive", "finetune", "-m", "other/model", *LAB[1][6:]]],
                                 olive.Options(base=files))
    with pytest.raises(ModelmakeError, match="not the output of an olive finetune"):
        olive.translate_commands([LAB[0], ["olive", "auto-opt", "-m", "models/phi/awq", "--adapter_path",
                                           "someone/adapter", "--use_ort_genai"]], olive.Options(base=files))


# --------------------------------------------------------------------------------------------------
# The CLI in a project copy, and one build


def test_cli_import_and_translate_in_a_copy(copy, files):
    cfg = write(files, "cli.json", current())
    r = run(copy, sys.executable, "-m", "modelmake", "olive", "import", str(cfg), "--name", "olive_cli")
    assert r.returncode == 0, r.stderr
    assert (copy / "conf" / "experiment" / "olive_cli.yaml").is_file()
    assert "passes.lora.training_args.gradient_accumulation_steps" in r.stdout
    assert "wrote conf/experiment/olive_cli.yaml" in r.stdout
    r = run(copy, sys.executable, "-m", "modelmake", "olive", "import", str(files / "nope.json"), "--name", "x")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no such file" in r.stderr
    r = run(copy, sys.executable, "-m", "modelmake", "olive", "translate", "--", *LAB[0])
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].startswith("modelmake build --until quantize model=phi35_mini")


@pytest.mark.slow
def test_an_imported_preset_builds_the_tiny_chain(copy, files):
    """The current layout's workflow on the tiny model (--model tiny_phi3), built up to the adapter."""
    cfg = write(files, "tiny.json", current())
    r = run(copy, sys.executable, "-m", "modelmake", "olive", "import", str(cfg), "--name", "olive_tiny",
            "--model", "tiny_phi3")
    assert r.returncode == 0, r.stderr
    r = run(copy, sys.executable, "-m", "modelmake", "build", "--until", "adapter", "experiment=olive_tiny",
            timeout=1200)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    r = run(copy, sys.executable, "-m", "modelmake", "plan", "experiment=olive_tiny")
    built = {line.split()[0]: line.split()[2] for line in r.stdout.splitlines()[2:]}
    assert all(built[s] == "yes" for s in ("base", "dataset", "quantize", "finetune", "export", "adapter")), built
    log = next((copy / "artifacts" / "finetune").glob("*/train_log.csv")).read_text().splitlines()
    assert len(log) == 1 + 1 + 4  # header, step 0, the 4 optimizer steps of max_steps
