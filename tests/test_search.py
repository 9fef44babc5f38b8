"""The Optuna search: every trial is a point of the build graph, its objective is read from that
point's evaluate artifact, repeated points and shared stages are reused, and reruns resume."""

import json

import pytest

from helpers.project import nodes, run
from modelmake.core.errors import ModelmakeError
from modelmake.core.paths import CONF_DIR
from modelmake.recipe import build_plan
from modelmake.search import load_spec, point_overrides

SPEC = """# test search
metric: ppl_onnx_lora
direction: minimize
n_trials: 4
sampler: random
seed: 3
overrides: [evaluate.speed.enabled=false]
params:
  lora.r: {choices: [2, 16]}
"""


@pytest.fixture(scope="module")
def searched(project):
    (project / "conf" / "search" / "two_ranks.yaml").write_text(SPEC)
    r = run(project, "modelmake", "search", "two_ranks", "--", "--cores", "2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    folder = project / r.stdout.strip().splitlines()[-1].split(": ", 1)[1].rsplit("/", 1)[0]
    return folder, json.loads((folder / "trials.json").read_text())


def test_each_trial_reads_its_objective_from_its_points_evaluate_artifact(project, searched):
    _, t = searched
    assert len(t["trials"]) == 4  # 4 trials on 2 values: at least one point is proposed twice
    for trial in t["trials"]:
        ev = nodes(project, *trial["overrides"])["evaluate"]
        assert trial["evaluate_key"] == ev.key
        assert trial["value"] == json.loads((ev.path / "metrics.json").read_text())["ppl_onnx_lora"]
    assert t["best"]["value"] == min(x["value"] for x in t["trials"])


def test_repeated_points_and_shared_stages_are_not_rebuilt(project, searched):
    _, t = searched
    seen = set()
    for trial in t["trials"]:
        assert not {"base", "dataset", "quantize", "export"} & set(trial["built"])  # the default build's
        if trial["evaluate_key"] in seen:
            assert trial["built"] == []
        seen.add(trial["evaluate_key"])
    assert len(seen) < len(t["trials"])


def test_rerun_resumes_the_study_and_builds_nothing(project, searched):
    folder, t = searched
    r = run(project, "modelmake", "search", "two_ranks", "--", "--cores", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.loads((folder / "trials.json").read_text())
    assert again["trials"] == t["trials"]
    md = (folder / "summary.md").read_text()
    assert "| trial | params | ppl_onnx_lora |" in md and ("lora.r=2" in md or "lora.r=16" in md)
    assert (folder / "history.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "search").glob("*.yaml")))
def test_every_search_spec_is_valid_and_composes(name):
    spec = load_spec(name)
    first = {k: p["choices"][0] if "choices" in p else p["low"] for k, p in spec.params.items()}
    build_plan(overrides=point_overrides(spec, first))


@pytest.mark.parametrize("body,field", [
    ("metric: ppl_onnx_lora\nparams: {lora.r: {choices: []}}", "params.lora.r"),
    ("metric: ppl_onnx_lora\ndirection: up\nparams: {lora.r: {choices: [4]}}", "direction"),
    ("metric: ppl_onnx_lora\nparams: {train.lr: {low: 1, high: 0.1}}", "params.train.lr"),
    ("metric: ppl_onnx_lora\nparams: {train.lr: {low: small, high: 0.1}}", "params.train.lr"),
    ("metric: ppl_onnx_lora\nparams: {lora.r: {choices: [4]}}\nn_trails: 3", "n_trails"),
    ("metric: ppl_onnx_lora\nsampler: grid\nparams: {train.lr: {low: 0.1, high: 1}}", "sampler"),
    ("params: {lora.r: {choices: [4]}}", "metric"),
])
def test_a_bad_search_spec_is_refused_naming_the_field(tmp_path, monkeypatch, body, field):
    import modelmake.search as search

    monkeypatch.setattr(search, "SEARCH_DIR", tmp_path)
    monkeypatch.setattr(search, "ROOT", tmp_path)
    (tmp_path / "bad.yaml").write_text("# bad\n" + body)
    with pytest.raises(ModelmakeError) as e:
        load_spec("bad")
    assert f"field '{field}'" in str(e.value) and "bad.yaml" in str(e.value)


def test_an_unknown_override_in_the_space_is_refused_before_anything_is_built(project, tmp_path):
    spec = "# typo\nmetric: ppl_onnx_lora\nparams: {lora.rank: {choices: [4]}}\n"
    (project / "conf" / "search" / "typo.yaml").write_text(spec)
    r = run(project, "modelmake", "search", "typo")
    assert r.returncode == 2 and "lora.rank" in r.stderr
    assert not list((project / "searches").glob("typo-*"))
