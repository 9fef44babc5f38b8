import shlex
import sys
from pathlib import Path

from modelmake.errors import ModelmakeError
from modelmake.plan import build_plan, compose

try:
    PLAN = build_plan(config)
except ModelmakeError as e:
    raise WorkflowError(f"modelmake: {e}") from None

ART = compose(PLAN.points[0]).artifacts
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


def overrides(stage):
    def cli(wildcards):
        return shlex.join(node(stage, wildcards).overrides)
    return cli


def stage_cmd(stage):
    """The script of a stage, with its point's overrides; MODELMAKE_EXPECT makes it refuse if
    its own plan disagrees with the path Snakemake waits for."""
    return (
        f"MODELMAKE_EXPECT={ART}/{stage}/{{wildcards.key}} "
        f"{shlex.quote(PY)} scripts/{stage}.py {{params.overrides}} threads={{threads}} > {{log}} 2>&1"
    )


def show_generations(plan):
    for point in plan.finals:
        out = point["generate"].path / "generation.txt"
        if out.exists():
            label = " ".join(point["generate"].overrides) or "defaults"
            print(f"\n=== generation ({label}) -> {out}\n{out.read_text()}", file=sys.stderr)
