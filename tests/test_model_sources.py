"""Where the base model comes from: the packaged GGUF, local folders keyed by every file's content,
hub ids at a revision; refusals at plan time, naming the field, before any work."""

from __future__ import annotations

import json
import logging
import shutil
import sys

import pytest

from helpers.project import run, snakemake
from modelmake.core.errors import ModelmakeError
from modelmake.models import sources as model_source
from modelmake.recipe import build_plan, compose

SMOL = "model=smollm2_135m"


def keys(*overrides: str) -> dict[str, str]:
    return {stage: n.key for stage, n in build_plan(overrides=list(overrides)).finals[0].items()}


@pytest.fixture(scope="module")
def folder(project, tmp_path_factory):
    """A local HF folder: the tiny base model the session built."""
    src = next((project / "artifacts" / "base").glob("*/model"))
    dst = tmp_path_factory.mktemp("local") / "model"
    shutil.copytree(src, dst)
    return dst


def test_packaged_gguf_is_keyed_by_its_content_and_needs_no_hub():
    node = build_plan(overrides=[SMOL]).finals[0]["base"]
    (path, digest), = node.data.items()
    assert path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and len(digest) == 64
    assert compose((SMOL,)).model.kind == "gguf"


def test_gguf_that_is_missing_or_not_gguf_is_refused(tmp_path):
    with pytest.raises(ModelmakeError, match="model.source: GGUF file not found"):
        build_plan(overrides=[SMOL, "model.source=nope.gguf"])
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelmakeError, match="no GGUF magic"):
        build_plan(overrides=[SMOL, f"model.source={fake}", "model.package=null"])


def test_local_folder_rewritten_in_place_with_the_same_sizes_moves_every_key(folder):
    ov = ("model=phi35_mini", f"model.source={folder}", "quantize.group_size=64")
    before = keys(*ov)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of the last weight: same shapes, same size
    weights.write_bytes(bytes(data))
    after = keys(*ov)
    # the base, and everything built from it (the dataset too: it is rendered with its tokenizer)
    assert [s for s in before if before[s] == after[s]] == []


def test_local_folder_moved_with_the_same_content_keeps_its_key(folder, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(folder, moved)
    assert keys("model=phi35_mini", f"model.source={folder}")["base"] == \
        keys("model=phi35_mini", f"model.source={moved}")["base"]


def test_unsupported_architecture_is_refused_at_plan_time_naming_it(folder, tmp_path):
    other = tmp_path / "gpt2"
    shutil.copytree(folder, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(cfg | {"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ModelmakeError) as e:
        build_plan(overrides=["model=phi35_mini", f"model.source={other}"])
    assert "GPT2LMHeadModel" in str(e.value) and "LlamaForCausalLM" in str(e.value)
    r = run(other.parent, sys.executable, "-m", "modelmake", "plan", "model=phi35_mini", f"model.source={other}")
    assert r.returncode == 2 and "GPT2LMHeadModel" in r.stderr


def test_pickle_only_or_missing_folder_is_refused(folder, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(folder, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(ModelmakeError, match="safetensors only"):
        build_plan(overrides=["model=phi35_mini", f"model.source={pickled}"])
    with pytest.raises(ModelmakeError, match="model folder not found"):
        build_plan(overrides=["model=phi35_mini", f"model.source={tmp_path / 'absent'}"])


def test_hub_id_needs_a_revision_and_a_branch_is_warned_about(caplog, monkeypatch):
    model_source._resolve.cache_clear()  # a model config is resolved (and warned about) once per state
    monkeypatch.setattr(model_source, "_warned", set())  # warned once per process: another test may have
    with pytest.raises(ModelmakeError, match="model.revision"):
        build_plan(overrides=["model=phi35_mini", "model.revision=null"])
    with caplog.at_level(logging.WARNING):
        build_plan(overrides=["model=phi35_mini", "model.revision=main"])
    assert "not a commit" in caplog.text
    caplog.clear()
    build_plan(overrides=["model=phi35_mini", "model.revision=" + "a" * 40])
    assert "not a commit" not in caplog.text


def test_chat_template_asked_of_a_tokenizer_without_one_is_refused(folder, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    tc = json.loads((bare / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(tc))
    with pytest.raises(ModelmakeError, match="data.template.*chat template"):
        build_plan(overrides=["model=phi35_mini", f"model.source={bare}", "data.template=chat"])
    build_plan(overrides=["model=phi35_mini", f"model.source={folder}", "data.template=chat"])


def test_group_size_that_does_not_divide_the_real_model_is_refused():
    with pytest.raises(ModelmakeError, match="does not divide the model's hidden_size=576"):
        build_plan(overrides=[SMOL, "quantize.group_size=128"])


TEMPLATE = r"Q: {prompt}\nA: {response}"


@pytest.mark.parametrize("form", ["modelmake", "list", "nested"])
def test_template_with_escapes_on_the_command_line_builds_the_dataset(project, form):
    """Olive's --text_template style: `\\n` escapes, braces and `|`, in every accepted form."""
    ov = [f"data.template={TEMPLATE}", "data.response_marker=A: "]
    node = build_plan(overrides=ov).finals[0]["dataset"]
    target = str(node.manifest)
    if form == "modelmake":
        r = run(project, sys.executable, "-m", "modelmake", "build", *ov, "--", "--cores", "1", target)
    elif form == "list":
        r = snakemake(project, "--cores", "1", target, "--config", "overrides=" + json.dumps(ov))
    else:  # Snakemake's own nested YAML: a real newline arrives, quoted on its way to Hydra
        r = snakemake(project, "--cores", "1", target, "--config",
                      'data={template: "Q: {prompt}\\nA: {response}", response_marker: "A: "}')
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in (project / node.path / "train.jsonl").read_text().splitlines()]
    assert rows[0]["text"].startswith("Q: ") and "\nA: " in rows[0]["text"]
    assert rows[0]["prompt"].endswith("\nA: ")


def test_a_comma_in_a_prompt_is_one_prompt_not_a_sweep():
    assert len(build_plan(overrides=["generate.prompt=Where, in Lisbon, should I eat?"]).points) == 1
    assert compose(build_plan(overrides=["generate.prompt=a, b"]).points[0]).generate.prompt == "a, b"


def test_no_op_plan_reads_no_weights_twice(folder, monkeypatch, tmp_path, request):
    """A model folder's content hashes are memoized on disk by path, size, mtime and inode: a new
    process (a new Snakemake start) reads none of the weights again."""
    from modelmake.core import hashing as hashcache
    from modelmake.models import sources

    def as_a_new_process():  # only the memo on disk: neither its in-memory copy nor a resolved source
        monkeypatch.setattr(hashcache, "_MEMO", None)
        sources._resolve.cache_clear()

    monkeypatch.setenv("MODELMAKE_HASH_MEMO", str(tmp_path))
    request.addfinalizer(sources._resolve.cache_clear)  # later tests must not see the fake hashes
    as_a_new_process()  # earlier tests resolved this folder in this process: hash it here, into tmp_path
    keys("model=phi35_mini", f"model.source={folder}")
    as_a_new_process()
    calls = []
    monkeypatch.setattr(hashcache, "sha256", lambda p: calls.append(p) or "x")
    keys("model=phi35_mini", f"model.source={folder}", "lora.r=3")
    assert calls == []
    (folder / "config.json").touch()  # a new mtime: that file, and only it, is read again
    as_a_new_process()
    keys("model=phi35_mini", f"model.source={folder}")
    assert [p.name for p in calls] == ["config.json"]
