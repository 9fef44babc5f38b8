"""DVC and Snakemake: one DAG. dvc.yaml is generated from the plan (and checked current), runs
the same commands at the same paths; after `git clone` + `dvc pull` neither tool rebuilds."""

import re
import sys
from pathlib import Path

import pytest
import yaml

from helpers.project import REPO, config_args, copy_project, run, snakemake
from modelmake.graph import dvc as dvcgen
from modelmake.recipe import RECIPE

DVC = str(Path(sys.executable).parent / "dvc")


def sh(cwd, *args, env=None):
    r = run(cwd, *args, env=env)
    assert r.returncode == 0, f"{' '.join(args)}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def git(cwd, *args):
    return sh(cwd, "git", "-c", "user.name=t", "-c", "user.email=t@t", *args)


def test_checked_in_dvc_yaml_is_current():
    assert dvcgen.is_current(RECIPE), "dvc.yaml is stale: run `modelmake dvc` (and rebuild + `dvc commit` for dvc.lock)"


def test_dvc_yaml_names_only_files_of_the_checkout():
    """A clone elsewhere (CI checks out under another path, with its own venv) must find
    dvc.yaml current: no absolute path, nothing from site-packages."""
    for name, stage in yaml.safe_load(dvcgen.render(RECIPE))["stages"].items():
        for dep in stage["deps"]:
            assert not Path(dep).is_absolute() and ".venv" not in dep, f"{name}: {dep}"
            assert dep.startswith("artifacts/") or (REPO / dep).is_file(), f"{name}: {dep}"


def test_checked_in_dvc_lock_covers_exactly_the_stages_of_dvc_yaml():
    lock = REPO / "dvc.lock"
    if not lock.exists():
        pytest.skip("no dvc.lock checked in")
    stages = set(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    assert set(yaml.safe_load(lock.read_text())["stages"]) == stages


def test_dvc_runs_the_commands_snakemake_runs(tmp_path):
    copy = copy_project(tmp_path / "p")
    out = ""
    for overrides in dvcgen.releases().values():
        printed = snakemake(copy, "-n", "-p", *config_args(overrides))
        assert printed.returncode == 0, printed.stderr
        out += printed.stdout + printed.stderr
    for name, stage in dvcgen.generate(RECIPE)["stages"].items():
        script_and_args = stage["cmd"].split(" ", 1)[1]  # python -m modelmake stage <name> <args>: the same
        out_path = next(iter(stage['outs'][0]))
        assert re.search(rf"MODELMAKE_EXPECT={re.escape(out_path)} \S+ {re.escape(script_and_args)} ",
                         out), name


def only_local(dry_run: str) -> bool:
    """A dry run plans nothing but what is not shared (register, report: not in dvc.yaml)."""
    from modelmake.graph.snakemake import parse_jobs

    return set(parse_jobs(dry_run)) <= {"register", "report", "all"}


def test_clone_and_pull_rebuilds_nothing_and_repro_rebuilds_only_the_stale(project, tmp_path):
    # A release repository: the built project under git + DVC, pushed to a local directory remote.
    repo = copy_project(tmp_path / "release", built=project)
    remote = tmp_path / "remote"
    (repo / "conf" / "releases.yaml").write_text("default: []\n")  # what the session built: the tiny chain
    git(repo, "init", "-q")
    sh(repo, DVC, "init", "-q")
    sh(repo, DVC, "remote", "add", "-d", "store", str(remote))
    sh(repo, sys.executable, "-m", "modelmake", "dvc")
    sh(repo, DVC, "commit", "-f", "-q")  # adopt what Snakemake built, without running anything
    assert "up to date" in sh(repo, DVC, "status")
    sh(repo, DVC, "push", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "release")

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    sh(clone, DVC, "pull", "-q")
    # what DVC versions is there; left to build: the registration and report, this machine's own
    assert only_local(sh(clone, str(Path(sys.executable).parent / "snakemake"), "-n"))
    assert "up to date" in sh(clone, DVC, "status")
    assert "eval_loss" in sh(clone, DVC, "metrics", "show")

    # A config change to the release: regenerate, then dvc repro runs exactly the stale stages.
    # (no decode-speed runs in this evaluate: it is the stale set that counts, not its numbers)
    release = ["train.steps=20", "evaluate.speed.enabled=false"]
    (clone / "conf" / "releases.yaml").write_text(f"default: {yaml.safe_dump(release, default_flow_style=True)}")
    sh(clone, sys.executable, "-m", "modelmake", "dvc")
    ran = re.findall(r"Running stage '(\w+)-[0-9a-f]{12}'", sh(clone, DVC, "repro"))
    assert sorted(ran) == ["adapter", "evaluate", "finetune", "generate"], ran  # register, report: not versioned
    assert only_local(sh(clone, str(Path(sys.executable).parent / "snakemake"), "-n", *config_args(release)))
    assert "up to date" in sh(clone, DVC, "status")
    git(clone, "add", "-A")
    git(clone, "commit", "-qm", "fewer steps")
    diff = sh(clone, DVC, "metrics", "diff", "HEAD~1")
    assert "eval_loss" in diff
