"""Resources per rule (conf/resources/): what a scheduler is asked for, never part of a key."""

from __future__ import annotations

import pytest

from helpers.project import REPO, run
from modelmake.graph.snakemake import config_args, snakemake_exe
from modelmake.recipe import build_plan, compose, stage_command

CHANGES = [
    ("resources=gpu_node",),
    ("resources.stages.quantize.mem_mb=123", "resources.stages.finetune.gpu=2", "resources.gpu_model=a100"),
]


def keys_and_commands(*overrides: str) -> dict:
    plan = build_plan(overrides=["lora.r=4,8", *overrides])  # a sweep: shared and per-point nodes
    return {(n.stage, n.key): stage_command(n) for n in plan.nodes.values()}


@pytest.mark.parametrize("change", CHANGES, ids=["gpu_node", "single-values"])
def test_a_resources_change_keeps_every_key_and_command(change):
    before, after = keys_and_commands(), keys_and_commands(*change)
    assert set(after) == set(before)  # every stage's key, the report's included
    # the commands too (dvc.yaml runs the same strings): resources overrides are dropped
    assert {k: v for k, v in after.items() if k[0] != "report"} == {k: v for k, v in before.items() if k[0] != "report"}


def test_every_resources_row_names_a_stage_and_has_every_field():
    from modelmake.recipe import RECIPE

    for group in ("cpu_small", "gpu_node"):
        stages = compose((f"resources={group}",)).resources.stages
        assert set(stages) - {"default"} <= {s.name for s in RECIPE.stages}, group  # no typo'd stage
        for stage, r in stages.items():
            assert set(r) == {"threads", "mem_mb", "runtime", "gpu"}, (group, stage)
            assert r.threads >= 1 and r.mem_mb > 0 and r.runtime > 0 and r.gpu >= 0, (group, stage)
    gpu = compose(("resources=gpu_node",)).resources.stages
    assert gpu.quantize.gpu == gpu.finetune.gpu == 1


def rule_resources(*overrides: str) -> dict[str, str]:
    """What Snakemake itself gives each rule's jobs (its dry-run printout)."""
    r = run(REPO, snakemake_exe(), "-n", "--forceall", *config_args(overrides))
    assert r.returncode == 0, r.stderr[-3000:]
    out = {}
    for block in (r.stdout + r.stderr).split("\nrule ")[1:]:
        name = block.split(":", 1)[0]
        res = [line.split("resources:", 1)[1].strip() for line in block.splitlines() if "resources:" in line]
        out[name] = res[0] if res else ""
    return out


def test_rules_read_resources_from_the_config():
    cpu, gpu = rule_resources(), rule_resources("resources=gpu_node")
    assert "mem_mb=3000" in cpu["quantize"] and "runtime=20" in cpu["quantize"] and "gpu=" not in cpu["quantize"]
    assert "gpu=1" in gpu["finetune"] and "slurm_partition=gpu" in gpu["finetune"] and "mem_mb=48000" in gpu["finetune"]
    assert "gpu=" not in gpu["export"] and "slurm_partition" not in gpu["export"]
