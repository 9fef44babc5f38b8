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
