import sys
from pathlib import Path

from modelmake.errors import ModelmakeError
from modelmake.plan import build_plan, compose, stage_command

try:
    PLAN = build_plan(config)
except ModelmakeError as e:
    raise WorkflowError(f"modelmake: {e}") from None

ART = compose(PLAN.points[0]).artifacts
RES = compose(PLAN.points[0]).resources  # conf/resources/: not keyed, so never a rebuild
PY = sys.executable  # the environment snakemake runs in runs the scripts too

wildcard_constraints:
    key="[0-9a-f]{12}",


def node(stage, wildcards):
    return PLAN.node(stage, wildcards.key)


def upstream(stage):
    """Input function: the manifests of a stage's inputs. ancient(): the key already covers
    them, so a restored or touched file (dvc pull, a copy) never triggers a rebuild."""
    def inputs(wildcards):
        return {name: ancient(str(n.manifest)) for name, n in node(stage, wildcards).inputs.items()}
    return inputs


def command(stage):
    """Params function: the stage's command, the same string dvc.yaml runs (plan.stage_command)."""
    def cmd(wildcards):
        return stage_command(node(stage, wildcards), PY)
    return cmd


def stage_cmd(stage):
    """MODELMAKE_EXPECT makes the script refuse if its own plan disagrees with the path Snakemake
    waits for; threads= hands it the cores Snakemake granted."""
    return (
        f"MODELMAKE_EXPECT={ART}/{stage}/{{wildcards.key}} {{params.cmd}} threads={{threads}} > {{log}} 2>&1"
    )


def stage_threads(stage):
    return int(RES.stages[stage].threads)


def stage_resources(stage):
    """What a scheduler gives the stage's job (conf/resources/<group>.yaml): memory, wall time
    and, for stages that want one, GPUs on the GPU partition (the slurm executor reads `gpu`,
    `gpu_model`, `slurm_partition`; locally they only count against --resources)."""
    r = RES.stages[stage]
    out = {"mem_mb": int(r.mem_mb), "runtime": int(r.runtime)}
    if r.gpu:
        out["gpu"] = int(r.gpu)
        if RES.gpu_model:
            out["gpu_model"] = str(RES.gpu_model)
        if RES.gpu_partition:
            out["slurm_partition"] = str(RES.gpu_partition)
    return out


def show_generations(plan):
    for point in plan.finals:
        out = point["generate"].path / "generation.txt"
        if out.exists():
            label = " ".join(point["generate"].overrides) or "defaults"
            print(f"\n=== generation ({label}) -> {out}\n{out.read_text()}", file=sys.stderr)
