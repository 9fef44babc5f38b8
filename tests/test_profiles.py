"""Profiles: `modelmake build --profile NAME` and what each profile keeps of profiles/default."""

from __future__ import annotations

import pytest
import yaml

from conftest import REPO, run


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
