"""The registered asset: a real local MLflow registry, Azure ML through its own entities and a fake
of `MLClient.models` only, idempotency, clashes, refusals, and lineage back to the data."""

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from helpers.project import build, copy_project, nodes, run, snakemake
from modelmake.core.errors import ModelmakeError
from modelmake.core.manifest import verify
from modelmake.graph.snakemake import config_args
from modelmake.recipe import build_plan, compose
from modelmake.stages.register import DIGEST_TAG, RECEIPT, AzureMLRegistry, azure_model, write_model_yml
from modelmake.stages.register import build as register_build


def receipt(node):
    return json.loads((node.path / RECEIPT).read_text())


def mlflow_client(project):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{project}/registry/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_default_target_ends_registered_with_lineage_tags(project):
    point = nodes(project)
    r = receipt(point["register"])
    assert (r["registry"], r["name"], r["version"]) == ("mlflow", "ft-for-travel", "1")
    mv = mlflow_client(project).get_model_version("ft-for-travel", "1")
    assert mv.tags["modelmake.key.quantize"] == point["quantize"].key
    assert mv.tags["modelmake.key.finetune"] == point["finetune"].key
    data_sha = hashlib.sha256((project / "data" / "travel_sample.jsonl").read_bytes()).hexdigest()
    assert mv.tags["modelmake.data.travel_sample.jsonl"] == data_sha
    assert mv.tags[DIGEST_TAG] == r["content_sha256"]
    staged = point["register"].path / "asset"
    assert (staged / "model" / "model.onnx").exists() and (staged / "adapters" / "travel.onnx_adapter").exists()


def test_registering_again_adds_nothing_and_new_content_is_the_next_version(project):
    first = receipt(nodes(project)["register"])
    r = run(project, sys.executable, "-m", "modelmake", "stage", "register", env={"MODELMAKE_FORCE": "1"})
    assert r.returncode == 0, r.stderr
    again = receipt(nodes(project)["register"])
    assert again["version"] == first["version"] == "1" and again["created"] is False
    def versions():
        return {int(v.version) for v in mlflow_client(project).search_model_versions("name='ft-for-travel'")}

    before = versions()  # other tests' points may have registered already
    build(project, "train.steps=30", until="register")
    other = receipt(nodes(project, "train.steps=30")["register"])
    assert int(other["version"]) == max(before) + 1 and other["created"]
    assert versions() == before | {max(before) + 1}


def test_name_clash_with_other_content_is_reported_not_overwritten(project):
    ov = ["train.steps=40", "register.version=1"]
    node = nodes(project, *ov)["register"]
    r = snakemake(project, "--cores", "2", *build_plan(overrides=ov).targets("register"), *config_args(ov))
    assert r.returncode != 0
    log = (project / "logs" / "register" / f"{node.key}.log").read_text()
    assert "'ft-for-travel' version 1 exists with other content; not overwritten" in log
    assert not node.path.exists()
    assert mlflow_client(project).get_model_version("ft-for-travel", "1").tags[DIGEST_TAG] == \
        receipt(nodes(project)["register"])["content_sha256"]


def test_unreachable_registry_is_a_clear_error_and_writes_no_receipt(project):
    ov = "register.local.tracking_uri=http://127.0.0.1:9"
    r = run(project, sys.executable, "-m", "modelmake", "stage", "register", ov)
    assert r.returncode == 2 and "registry http://127.0.0.1:9" in r.stderr, r.stderr
    assert not nodes(project, ov)["register"].path.exists()


def test_artifact_that_does_not_match_its_manifest_is_refused(project, tmp_path):
    copy = copy_project(tmp_path / "p", built=project)
    point = nodes(copy)
    shutil.rmtree(point["register"].path)
    with (point["export"].path / "model" / "genai_config.json").open("a") as f:
        f.write(" ")
    r = run(copy, sys.executable, "-m", "modelmake", "stage", "register")
    assert r.returncode == 2
    assert "does not match its manifest" in r.stderr and "genai_config.json: content changed" in r.stderr
    assert not point["register"].path.exists()
    (point["adapter"].path / "manifest.json").unlink()
    with pytest.raises(ModelmakeError, match="no manifest.json"):
        verify(point["adapter"].path)


# --- Azure ML, without network ---------------------------------------------------------------
class FakeModels:
    """Stands in for `MLClient.models` only: list and create_or_update, storing azure-ai-ml entities."""

    def __init__(self):
        self.store = []

    def list(self, name):
        from azure.core.exceptions import ResourceNotFoundError

        found = [m for m in self.store if m.name == name]
        if not found:
            raise ResourceNotFoundError("model not found")
        return found

    def create_or_update(self, model):
        assert model.type == "custom_model" and os.path.isdir(model.path)
        self.store.append(model)
        return model


def azure_cfg(**kw):
    base = OmegaConf.to_container(compose(("register=azureml",)), resolve=True)
    cfg = OmegaConf.create(base)
    for k, v in kw.items():
        OmegaConf.update(cfg, k, v)
    return cfg


def test_azureml_registers_idempotently_through_a_fake_models_client(project, tmp_path):
    point = nodes(project)
    fake = SimpleNamespace(models=FakeModels())
    node = SimpleNamespace(**{**point["register"].__dict__})
    outs = []
    for i in range(2):
        out = tmp_path / f"r{i}"
        out.mkdir()
        metrics = register_build(node, out, azure_cfg(), azure_client=fake)
        outs.append(metrics)
    assert outs[0]["version"] == "1" and outs[0]["created"]
    assert outs[1]["version"] == "1" and not outs[1]["created"]
    assert len(fake.models.store) == 1
    model = fake.models.store[0]
    assert model.tags[DIGEST_TAG] and model.tags["modelmake.key.finetune"] == point["finetune"].key
    text = (tmp_path / "r0" / "model.yml").read_text() + (tmp_path / "r0" / RECEIPT).read_text()
    assert "credential" not in text.lower() and "secret" not in text.lower()


def test_azureml_model_yml_round_trips_through_azure_ai_mls_loader(project, tmp_path):
    from azure.ai.ml import load_model

    (tmp_path / "asset").mkdir()
    (tmp_path / "asset" / "model.onnx").write_bytes(b"x")
    m = azure_model("ft-for-travel", "3", "desc", {"a": "b"}, tmp_path / "asset")
    write_model_yml(m, tmp_path / "model.yml", "asset")
    assert "path: asset" in (tmp_path / "model.yml").read_text()  # relocatable: moves with the artifact
    back = load_model(tmp_path / "model.yml")
    assert (back.name, back.version, back.type, back.tags) == ("ft-for-travel", "3", "custom_model", {"a": "b"})
    assert Path(back.path) == tmp_path / "asset"  # resolved against model.yml's folder


def test_azureml_without_a_workspace_is_refused(monkeypatch):
    for env in AzureMLRegistry.ENV.values():
        monkeypatch.delenv(env, raising=False)
    with pytest.raises(ModelmakeError, match="workspace not configured"):
        AzureMLRegistry(OmegaConf.create({"subscription_id": None, "resource_group": None, "workspace_name": None}))


# --- lineage ----------------------------------------------------------------------------------
def test_explain_prints_the_lineage_back_to_the_data_hash(project):
    point = nodes(project)
    r = run(project, sys.executable, "-m", "modelmake", "explain", str(point["register"].path), "--verify")
    assert r.returncode == 0, r.stderr
    data_sha = hashlib.sha256((project / "data" / "travel_sample.jsonl").read_bytes()).hexdigest()
    assert f"data data/travel_sample.jsonl sha256:{data_sha}" in r.stdout
    for stage in ("register", "generate", "adapter", "export", "finetune", "quantize", "dataset", "base"):
        assert f"{stage} {point[stage].key}" in r.stdout


def test_concurrent_registrations_to_one_sqlite_registry_all_succeed(tmp_path):
    """Parallel sweep jobs register at once: without the lock they race on the schema and die."""
    import subprocess
    import textwrap

    script = textwrap.dedent("""
        import sys
        from pathlib import Path
        from modelmake.stages.register import MlflowRegistry
        r = MlflowRegistry("sqlite:///reg/mlflow.db", "reg/artifacts", "modelmake")
        print(r.register("ft-for-travel", None, "d", {"modelmake.t": "1"}, Path(sys.argv[1]), sys.argv[1])["version"])
    """)
    (tmp_path / "race.py").write_text(script)
    for name in "abc":
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text(name)
    procs = [subprocess.Popen([sys.executable, "race.py", n], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in "abc"]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    assert sorted(o[0].strip().splitlines()[-1] for o in outs) == ["1", "2", "3"]


@pytest.mark.parametrize("replacement", ["empty", "other content"])
def test_a_replaced_registry_database_is_refused_naming_the_lost_version(tmp_path, replacement):
    """A receipt names version 1 of a model; the database now holds no such version, or one with other
    content: registering refuses (a fresh one would number from 1 again), naming the version. Each
    step is its own process, as each register job is."""
    import subprocess
    import textwrap

    (tmp_path / "step.py").write_text(textwrap.dedent("""
        import json, sys
        from pathlib import Path
        from modelmake.core.errors import ModelmakeError
        from modelmake.stages.register import MlflowRegistry
        asset, receipts = sys.argv[1], json.loads(sys.argv[2])
        r = MlflowRegistry("sqlite:///reg/mlflow.db", "reg/artifacts", "modelmake", receipts=receipts)
        if asset == "-":
            r._create_db()
            sys.exit(0)
        try:
            out = r.register("ft", None, "d", {"modelmake.t": "1"}, Path(asset), "digest-" + asset)
        except ModelmakeError as e:
            sys.exit(str(e))
        print(json.dumps(out | {"content_sha256": "digest-" + asset}))
    """))

    def step(asset: str, receipts=()) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "step.py", asset, json.dumps(list(receipts))], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)

    for name in "ab":
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text(name)
    first = step("a")
    assert first.returncode == 0, first.stderr[-2000:]
    receipt = json.loads(first.stdout.strip().splitlines()[-1])
    shutil.rmtree(tmp_path / "reg")
    if replacement == "other content":  # a fresh database where version 1 is something else
        assert step("b").returncode == 0
    else:
        (tmp_path / "reg").mkdir()
        assert step("-").returncode == 0
    again = step("b", [receipt])
    assert again.returncode != 0 and "lost version 1 of 'ft'" in again.stderr.strip().splitlines()[-1], \
        again.stderr[-2000:]
