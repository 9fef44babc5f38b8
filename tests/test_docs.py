"""A command the README or a docs page shows is a promise: each one runs here, as a user would run
it (placeholders filled: an artifact's key, a data file, a model folder), or is named in COVERED
with the test that runs it. A new command nobody runs fails `test_every_shown_command_is_run`.
The Python snippet of docs/onnx-lora.md runs too."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from helpers.folders import hf_folder
from helpers.project import REPO, copy_project, nodes, run

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def shown(lang: str = "bash") -> list[tuple[str, str]]:
    """(page, command) of every line of every ```bash block (comments and blank lines left out)."""
    out = []
    for page in DOCS:
        for block in re.findall(rf"```{lang}\n(.*?)```", page.read_text(), re.S):
            if lang != "bash":
                out.append((page.name, block))
                continue
            joined = re.sub(r"\\\n\s*", " ", block)  # a command continued over lines with `\` is one
            for line in joined.splitlines():
                line = strip_comment(line).strip()
                if line and not line.startswith("#"):
                    out.append((page.name, line))
    return out


def strip_comment(line: str) -> str:
    """The line without a trailing `# comment` outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if ch in "'\"" and quote in (None, ch):
            quote = None if quote else ch
        elif ch == "#" and quote is None and (i == 0 or line[i - 1] == " "):
            return line[:i]
    return line


# Commands another test runs (the test names it), or that cannot run here (the reason).
OLIVE = "tests/test_olive.py::"
# Commands shown beginning so (long ones, continued over lines), with the test that runs them.
COVERED_PREFIX = {
    "modelmake olive translate -- olive quantize": OLIVE + "test_the_lab_commands_translate_to_what_a_user_would_type",
}
DVC_TEST = "tests/test_dvc.py::test_clone_and_pull_rebuilds_nothing_and_repro_rebuilds_only_the_stale"
AZURE_CACHE = "tests/test_cache.py::test_an_azure_clone_pulls_the_publishers_bytes_and_builds_only_register_and_report"
COVERED = {
    "make run": "tests/test_release.py (the release fixture runs it on a fresh copy)",
    "make test": ".ci/run (CI runs it)",
    "modelmake search lora_lr": "tests/test_search.py (the same command on a two-trial spec, resumed)",
    "modelmake build --profile slurm lora.r=4,8": "tests/test_cluster.py (builds and sweeps through a real SLURM)",
    "modelmake build --profile slurm": "tests/test_cluster.py::test_the_sweep_ran_every_stage_as_a_job_on_both_nodes",
    "modelmake build --profile slurm model=phi35_mini export=int4_cuda resources=gpu_node":
        "tests/test_profiles.py::test_slurm_profile_jobs_get_the_threads_their_group_asks_for (its dry run)",
    "dvc commit -f": DVC_TEST,
    "dvc push": DVC_TEST,
    "dvc metrics diff HEAD~1": DVC_TEST,
    "az login": "not here: Azure ML needs a workspace and a network (documented as untested)",
    "modelmake olive translate --script flow.sh": OLIVE + "test_the_lab_script_translates_like_its_commands",
    "modelmake olive translate --run -- olive ...": OLIVE + "test_translate_runs_the_build_line",
    "modelmake olive import olive-config.json --name phrases": OLIVE + "test_cli_import_and_translate_in_a_copy",
    "modelmake build experiment=phrases": OLIVE + "test_an_imported_preset_builds_the_tiny_chain",
    "modelmake build cache=azure cache.url=az://modelmake/cache": AZURE_CACHE,
    "modelmake build data.path=az://team-data/travel.jsonl":
        "tests/test_cache.py::test_data_from_blob_storage_is_keyed_by_content_and_refused_by_line",
    "export MODELMAKE_CACHE=az://modelmake/cache": AZURE_CACHE + " (sets $MODELMAKE_CACHE alone)",
    "modelmake build cache=azure cache.url=az://modelmake/cache cache.push=false":
        "tests/test_cache.py::test_a_pull_only_machine_publishes_nothing (on a folder cache)",
    "az ml model create -f artifacts/register/<key>/model.yml": "not here: Azure ML (the model.yml is checked by "
                                                                "tests/test_registry.py)",
    "AZURE_SUBSCRIPTION_ID=... AZURE_RESOURCE_GROUP=... AZUREML_WORKSPACE_NAME=... modelmake build register=azureml":
        "not here: Azure ML (tests/test_registry.py drives the Azure ML backend with a stand-in client)",
    "python bench/decode.py": "bench/decode.py (make bench runs it: minutes of decode timing, not a test)",
    "bench/gpu.sh --wheels .cache/wheels": "not in the suite: it downloads wheels from PyPI (docs/deploy.md)",
    "bench/gpu.sh /tmp/gpu-check .cache/wheels": "not here: a GPU machine (its phases ran on a CPU with "
                                                 "--device cpu --shape tiny; docs/deploy.md)",
}
# Commands that build SmolLM2 from scratch on other data: their plan and DAG run (a dry run).
DRY = {"modelmake build experiment=smollm2 export=int4_merged",
       "modelmake build experiment=smollm2 data.path=my.jsonl data.fields.user=question data.fields.assistant=answer",
       "modelmake build experiment=smollm2 data.fields.user=question data.fields.assistant=answer data.path=my.jsonl"}
# Commands for a GPU node: here they end with the plan's refusal, as they should.
REFUSED = {"modelmake build model=phi35_mini export=int4_cuda resources=gpu_node": "export.execution_provider"}


def normal(command: str) -> str:
    return re.sub(r"(^|\s)\.venv/bin/", r"\1", command)


def test_every_shown_command_is_run():
    here = {normal(c) for _, c in shown()}
    ran = set(RUN) | set(COVERED) | DRY | set(REFUSED)
    left = [c for c in sorted(here - ran) if not any(c.startswith(p) for p in COVERED_PREFIX)]
    assert left == [], "shown in the docs, run by no test: add it to RUN or COVERED"
    for where in [*COVERED.values(), *COVERED_PREFIX.values()]:
        test_file = where.split(" ", 1)[0].split("::")[0]
        if test_file.startswith("tests/"):
            assert (REPO / test_file).is_file(), where
            name = where.split("::")[1].split(" ")[0] if "::" in where else None
            assert name is None or f"def {name}(" in (REPO / test_file).read_text(), where


@pytest.fixture(scope="module")
def docs(project, release, tmp_path_factory):
    """A copy of the built tiny project, with the release's SmolLM2 artifacts beside, and the files
    the commands name: my.jsonl (question/answer records) and a model folder."""
    p = copy_project(tmp_path_factory.mktemp("docs") / "modelmake", built=project)
    # the tiny project's registry stays the one registry: the release's registrations (their
    # receipts name versions of the release's own registry) are left out and made again here
    for stage in (release / "artifacts").iterdir():
        for folder in stage.iterdir() if stage.name != "register" else ():
            if not (p / "artifacts" / stage.name / folder.name).exists() and not folder.name.startswith("."):
                shutil.copytree(folder, p / "artifacts" / stage.name / folder.name)
    records = [json.loads(x) for x in (REPO / "data" / "travel_sample.jsonl").read_text().splitlines()]
    (p / "my.jsonl").write_text("".join(json.dumps({"question": r["prompt"], "answer": r["response"]}) + "\n"
                                        for r in records[:60]))
    folder = hf_folder(tmp_path_factory.mktemp("models") / "my-phi-3.5")
    return {"project": p, "folder": folder, "cache": tmp_path_factory.mktemp("team") / "modelmake-cache"}


def filled(command: str, docs: dict) -> list[str]:
    p = docs["project"]
    command = command.replace("/models/my-phi-3.5", str(docs["folder"])).replace(
        "/mnt/team/modelmake-cache", str(docs["cache"]))
    if "<key>" in command:
        stage = re.search(r"artifacts/(\w+)/<key>", command).group(1)
        command = command.replace("<key>", nodes(p)[stage].key)
    return shlex.split(command)


# Commands run as shown, in this order (later ones may read what earlier ones built).
RUN = [
    "modelmake plan lora.r=4,8,16",
    "modelmake build lora.r=16 train.lr=3e-4",
    "python -m modelmake stage finetune lora.r=16",
    "modelmake build lora.r=4,8,16",
    "snakemake --cores all --config overrides='[\"lora.r=4,8,16\"]'",
    "modelmake build model=phi35_mini model.source=/models/my-phi-3.5 model.revision=null",
    "modelmake build data.path=my.jsonl 'data.template=Q: {question}\\nA: {answer}' 'data.response_marker=A: '",
    "modelmake explain artifacts/register/<key> --verify",
    'modelmake generate --prompt "What food should I try in Vienna?" experiment=smollm2',
    'modelmake generate --prompt "What food should I try in Vienna?" --no-adapter experiment=smollm2',
    "modelmake dvc",
    "modelmake build --until adapter lora.r=16",
    "modelmake build cache=folder cache.url=/mnt/team/modelmake-cache",
    "modelmake cache status cache=folder cache.url=/mnt/team/modelmake-cache",
    "modelmake cache push cache=folder cache.url=/mnt/team/modelmake-cache",
    "modelmake cache pull --until export cache=folder cache.url=/mnt/team/modelmake-cache",
    "modelmake cache gc --older-than 30d cache=folder cache.url=/mnt/team/modelmake-cache",
]


@pytest.mark.parametrize("command", RUN)
def test_a_shown_command_runs(docs, command):
    assert command in {normal(c) for _, c in shown()}, "not shown anywhere any more: drop it from RUN"
    argv = filled(command, docs)
    exe = {"modelmake": [sys.executable, "-m", "modelmake"], "python": [sys.executable],
           "snakemake": [str(Path(sys.executable).parent / "snakemake")]}[argv[0]]
    r = run(docs["project"], *exe, *argv[1:], timeout=1800)
    assert r.returncode == 0, f"{command}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"


@pytest.mark.parametrize("command", sorted(DRY))
def test_a_shown_smollm2_rebuild_plans_its_graph(docs, command):
    argv = filled(command, docs)
    r = run(docs["project"], sys.executable, "-m", "modelmake", *argv[1:], "--", "-n")
    assert r.returncode == 0 and "Job stats:" in r.stdout + r.stderr, r.stderr[-3000:]


@pytest.mark.parametrize("command,field", sorted(REFUSED.items()))
def test_a_shown_gpu_command_is_refused_here_by_the_plan(docs, command, field):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA: the command would build")
    r = run(docs["project"], sys.executable, "-m", "modelmake", *filled(command, docs)[1:])
    assert r.returncode == 2 and f"config field '{field}'" in r.stderr


def test_the_python_snippet_runs_and_streams_an_answer(docs):
    ((_, snippet),) = [s for s in shown("python") if "onnxruntime_genai" in s[1]]
    point = nodes(docs["project"])
    code = snippet.replace("artifacts/export/<key>", str(point["export"].path)).replace(
        "artifacts/adapter/<key>", str(point["adapter"].path))
    r = run(docs["project"], sys.executable, "-c", code, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(r.stdout.strip()) > 10  # the fine-tuned answer, streamed token by token
