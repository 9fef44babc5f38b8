"""The build graph on a real SLURM cluster: one node on this machine (tests/cluster/slurm-up.sh),
jobs sent through profiles/slurm exactly as a user sends them (`modelmake build --profile slurm`).

The default chain is built once through SLURM in its own copy and compared with the session's
local build (`project`); everything else is cheap: a second run, a LoRA sweep as the profile's
dry run, and refused submissions.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from helpers.project import REPO, copy_project, nodes, run
from modelmake.graph.snakemake import config_args, parse_jobs, snakemake_exe
from modelmake.recipe import RECIPE

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

UP, DOWN = REPO / "tests" / "cluster" / "slurm-up.sh", REPO / "tests" / "cluster" / "slurm-down.sh"
SKIP_EXIT = 3  # slurm-up.sh: cannot start here (not root, no apt-get, a real cluster's config)
ALL_STAGES = [s.name for s in RECIPE.stages if s.when is None]  # the default chain's (merged: when asked)
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """munge + slurmctld + slurmd, stopped at the end of the session even when a test fails."""
    state = tmp_path_factory.mktemp("slurm-state")
    up = subprocess.run(["bash", str(UP), str(state)], capture_output=True, text=True, timeout=900)
    if up.returncode == SKIP_EXIT:
        msg = f"SLURM test cluster cannot start here: {up.stderr.strip().splitlines()[-1]}"
        print(msg)
        pytest.skip(msg)
    # from here on the daemons may be half up: always stop them
    try:
        assert up.returncode == 0, f"slurm-up.sh failed ({up.returncode}):\n{up.stdout}\n{up.stderr[-3000:]}"
        yield state
    finally:
        subprocess.run(["bash", str(DOWN), str(state)], capture_output=True, text=True, timeout=120)


def modelmake_build(project: Path, *args: str) -> subprocess.CompletedProcess:
    """`modelmake build --profile slurm ...`, as the README tells a user (the venv's entry point,
    importing this copy's modelmake)."""
    return run(project, "modelmake", "build", "--profile", "slurm", *args, timeout=1200)


def submitted(r: subprocess.CompletedProcess) -> list[tuple[str, Path]]:
    """(SLURM job id, job log) for every sbatch Snakemake made."""
    return [(j, Path(log)) for j, log in SUBMITTED.findall(r.stdout + r.stderr)]


def slurm_dry_run(project: Path, *overrides: str) -> dict[str, int]:
    r = run(project, snakemake_exe(), "-n", "--workflow-profile", "profiles/slurm", *config_args(overrides))
    assert r.returncode == 0, r.stderr[-3000:]
    return parse_jobs(r.stdout + r.stderr)


@pytest.fixture(scope="session")
def slurm_built(slurm, tmp_path_factory):
    """The default chain built through SLURM in a fresh copy (no artifacts copied in)."""
    dst = copy_project(tmp_path_factory.mktemp("slurm") / "modelmake")
    r = modelmake_build(dst)
    assert r.returncode == 0, f"SLURM build failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return dst, r


def test_every_stage_ran_as_a_slurm_job(slurm_built):
    project, r = slurm_built
    jobs = submitted(r)
    assert len(jobs) == len(ALL_STAGES), r.stderr[-3000:]
    # conf/resources/cpu_small: the plugin's status backoff capped (modelmake.cluster)
    assert "SLURM job states checked at least every 1 s" in r.stderr, r.stderr[:3000]
    # the plugin names each job's log by rule and key: logs/slurm/rule_<stage>/<key>/<jobid>.log
    point = nodes(project)
    ran = {}
    for jobid, log in jobs:
        stage, key = log.parent.parent.name.removeprefix("rule_"), log.parent.name
        ran[stage] = key
        text = log.read_text()
        assert f"rule {stage}:" in text and "1 of 1 steps (100%) done" in text, text[-2000:]
        assert log.name == f"{jobid}.log"
    assert set(ran) == set(ALL_STAGES)
    assert {s: ran[s] for s in point} == {s: n.key for s, n in point.items()}


def test_slurm_keys_equal_a_local_build(slurm_built, project):
    """Same keys, same manifests' inputs and config: where a job ran does not enter the key."""
    built, _ = slurm_built
    for stage in ALL_STAGES:
        local = {p.parent.name for p in (project / "artifacts" / stage).glob("*/manifest.json")}
        remote = {p.parent.name for p in (built / "artifacts" / stage).glob("*/manifest.json")}
        assert remote and remote <= local, (stage, remote, local)
    for n in nodes(built).values():
        a = json.loads((built / n.manifest.relative_to(built)).read_text())
        b = json.loads((project / n.manifest.relative_to(built)).read_text())
        assert (a["key"], a["inputs"], a["config"], a["data"]) == (b["key"], b["inputs"], b["config"], b["data"])


def test_second_slurm_run_submits_nothing(slurm_built):
    project, _ = slurm_built
    r = modelmake_build(project)
    assert r.returncode == 0, r.stderr[-3000:]
    assert submitted(r) == [] and "Nothing to be done" in r.stdout + r.stderr


def test_lora_sweep_submits_no_quantize_or_export(slurm_built):
    project, _ = slurm_built
    sweep = ("lora.r=3,5",)
    # the whole sweep, as Snakemake would send it to SLURM
    jobs = slurm_dry_run(project, *sweep)
    assert "quantize" not in jobs and "export" not in jobs and "base" not in jobs, jobs
    assert jobs["finetune"] == 2 and jobs["adapter"] == 2, jobs
    # (not sent: that SLURM runs what Snakemake plans is the default build's test above; sending two
    # more fine-tunes cost ~1 min of the plugin's status polling and showed nothing new)


def refused(project: Path, *args: str) -> tuple[str, Path]:
    """A fine-tune sent with a bad resource: it must fail with the scheduler's reason, name the
    job's log, and leave no artifact that counts as done."""
    over = "lora.r=7"
    ft = nodes(project, over)["finetune"]
    r = modelmake_build(project, over, "--", "--until", "finetune", *args)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-3000:]
    assert f"logs/finetune/{ft.key}.log" in out, out[-3000:]
    assert not ft.manifest.exists() and not (ft.path.exists() and any(ft.path.iterdir()))
    # nothing half-written is taken as done afterwards: a dry run still wants the fine-tune
    assert slurm_dry_run(project, over).get("finetune") == 1
    return out, ft


def test_unknown_partition_is_refused(slurm_built):
    project, _ = slurm_built
    out, _ = refused(project, "--set-resources", "finetune:slurm_partition=no_such_partition")
    assert "SLURM sbatch failed" in out and "invalid partition specified: no_such_partition" in out, out[-3000:]


def test_gpu_on_a_cluster_without_gpus_is_refused(slurm_built):
    project, _ = slurm_built
    # the cpu_small group with one GPU for the fine-tune: the test cluster has no GRES at all
    over = "resources.stages.finetune.gpu=1"
    ft = nodes(project, "lora.r=7")["finetune"]
    r = modelmake_build(project, "lora.r=7", over, "--", "--until", "finetune")
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-3000:]
    assert "--gpus=1" in out and "Invalid generic resource (gres) specification" in out, out[-3000:]
    assert f"logs/finetune/{ft.key}.log" in out
    assert not ft.manifest.exists() and not (ft.path.exists() and any(ft.path.iterdir()))
