"""Profiles: `modelmake build --profile NAME` and what each profile keeps of profiles/default."""

from __future__ import annotations

import pytest
import yaml

from helpers.project import REPO, run
from modelmake.recipe import compose


@pytest.mark.parametrize("name", ["slurm", "kubernetes"])
def test_cluster_profiles_keep_the_default_profiles_settings(name):
    """A workflow profile replaces profiles/default: without its rerun-triggers, Snakemake would
    rebuild current artifacts on a params/code/mtime trigger that the key already covers."""
    default = yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())
    profile = yaml.safe_load((REPO / f"profiles/{name}/config.yaml").read_text())
    assert {k: profile.get(k) for k in default} == default
    assert profile["executor"] == name


def test_unknown_profile_is_refused_with_the_known_ones():
    r = run(REPO, "modelmake", "build", "--profile", "no_such_profile")
    assert r.returncode == 2
    assert "--profile no_such_profile: no profiles/no_such_profile/config.yaml" in r.stderr
    assert "'slurm'" in r.stderr and "'default'" in r.stderr


def test_slurm_profile_jobs_get_the_threads_their_group_asks_for():
    """`modelmake build --profile slurm` leaves --cores to the profile: with the CLI's usual
    `--cores all` a cluster job would get at most the submit host's cores."""
    r = run(REPO, "modelmake", "build", "--profile", "slurm", "resources=gpu_node", "--", "-n", "--forceall")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    quantize = out.split("\nrule quantize:", 1)[1].split("\n\n", 1)[0]
    assert "threads: 8" in quantize and "gpu=1" in quantize, quantize


def test_slurm_status_wait_is_capped_on_the_pinned_plugin():
    """resources.slurm_status_max_s caps the plugin's own backoff (check_active_jobs adds 10 s a
    round with no job finished), and only for the plugin version that backoff was read from."""
    from importlib.metadata import version

    from snakemake_executor_plugin_slurm import Executor

    from modelmake.graph.cluster import PLUGIN, PLUGIN_VERSION, cap_status_interval

    assert version(PLUGIN) == PLUGIN_VERSION  # requirements/base.txt pins the version it was read from
    before = Executor.__dict__.get("next_seconds_between_status_checks")
    try:
        assert "at least every 3 s" in cap_status_interval(3)
        ex = Executor.__new__(Executor)  # no workflow: only the property is exercised
        ex.next_seconds_between_status_checks = 2  # init_seconds_before_status_checks (profiles/slurm)
        seen = []
        for _ in range(4):  # the plugin's line, run as it runs it after each round with none done
            ex.next_seconds_between_status_checks = min(ex.next_seconds_between_status_checks + 10, 180)
            seen.append(ex.next_seconds_between_status_checks)
        assert seen == [3, 3, 3, 3]
        ex.next_seconds_between_status_checks = 2  # reset once a job finished: below the cap, kept
        assert ex.next_seconds_between_status_checks == 2
    finally:
        if before is None:
            del Executor.next_seconds_between_status_checks
        else:
            Executor.next_seconds_between_status_checks = before
    assert compose(("resources=gpu_node",)).resources.slurm_status_max_s is None  # long jobs: upstream's
