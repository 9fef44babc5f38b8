# The plan all rules read: built once as the workflow loads, from --config (Hydra overrides).
import os
import shlex
import sys
from pathlib import Path

from modelmake.core.errors import ModelmakeError
from modelmake.core.lifecycle import PARENT_ENV, PARENT_HOST_ENV
from modelmake.core.locks import recover
from modelmake.core.owners import host_id
from modelmake.graph.cache import CacheError
from modelmake.graph.cache import setting as cache_setting
from modelmake.graph.cache import store as cache_store
from modelmake.recipe import RECIPE, build_plan, compose, stage_command

try:
    PLAN = build_plan(config)
except ModelmakeError as e:
    raise WorkflowError(f"modelmake: {e}") from None

ART = compose(PLAN.points[0]).artifacts
RES = compose(PLAN.points[0]).resources  # conf/resources/: not keyed, so never a rebuild

# The shared cache (conf/cache/, $MODELMAKE_CACHE): not keyed, so it reaches the stage processes by
# the environment. Asked once per build, a listing: an artifact it holds counts as present (no
# input below it is wanted); its job is a verified pull.
CACHE = cache_setting(compose(PLAN.points[0]))
CACHED = set()
if CACHE is not None:
    os.environ.update(CACHE.env())
    if CACHE.pull:
        try:
            _listed = cache_store(CACHE.url).entries()
        except CacheError as e:
            if CACHE.required:
                raise WorkflowError(f"modelmake: cache {CACHE.url}: {e} (cache.required=true)") from None
            print(f"modelmake: warning: cache {CACHE.url}: {e}; building here", file=sys.stderr)
            _listed = set()
        CACHED = {(n.stage, n.key) for n in PLAN.nodes.values()
                  if RECIPE.spec(n.stage).shared and f"{n.stage}/{n.digest}" in _listed}

# Resume after any crash with no flags: what dead runs left goes (Snakemake's locks and incomplete
# markers if no other run holds the project lock; temporary folders, lock files and scratch folders
# whose owner is provably dead, on this host or another: core.locks.recover prints each with the
# proof); this run then holds the project lock shared for its life. Stages watch this process and
# die with it (lifecycle.die_with_parent), where it runs on their host.
recover(Path(".snakemake"), Path(ART))
os.environ[PARENT_ENV] = str(os.getpid())
os.environ[PARENT_HOST_ENV] = host_id()
PY = sys.executable  # the environment snakemake runs in runs the stages too

def node(stage, wildcards):
    return PLAN.node(stage, wildcards.key)


def present(n):
    """Built here, or held by the shared cache (its job pulls it)."""
    return n.manifest.exists() or (n.stage, n.key) in CACHED


def upstream(stage):
    """Input function: the manifests of a stage's inputs. ancient(): the key already covers
    them, so a restored or touched file (dvc pull, a copy) never triggers a rebuild. A present
    artifact needs none: a hole below it (an input's manifest deleted) is rebuilt alone (rule
    all asks for every artifact that is not present) instead of rebuilding everything above it."""
    def inputs(wildcards):
        n = node(stage, wildcards)
        if present(n):
            return {}
        return {name: ancient(str(i.manifest)) for name, i in n.inputs.items()}
    return inputs


def data_inputs(stage):
    """Input function: the data files a stage reads (keyed by content, so ancient)."""
    return lambda w: [ancient(p) for p in node(stage, w).data if Path(p).is_file()]


def command(stage):
    """Params function: the stage's command, the same string dvc.yaml runs (plan.stage_command)."""
    return lambda w: stage_command(node(stage, w), PY)


def expect(stage):
    """Params function: the artifact folder Snakemake waits for, shell-quoted (a user's
    `artifacts=` value may hold any character; nothing typed reaches the shell unquoted)."""
    return lambda w: shlex.quote(str(node(stage, w).path))


# MODELMAKE_EXPECT makes the stage refuse if its own plan disagrees with the path Snakemake waits
# for; threads= hands it the cores Snakemake granted. Every value here is quoted (params) or
# generated (the key matches [0-9a-f]{12}, threads is an int, the log path is ours).
STAGE_SHELL = "MODELMAKE_EXPECT={params.expect} {params.cmd} threads={threads} > {log} 2>&1"


def stage_resources(stage):
    """What a scheduler gives the stage's job (conf/resources/<group>.yaml: its `default` row,
    then the stage's own): threads, memory, wall time and, for stages that want one, GPUs on the
    GPU partition (the slurm executor reads `gpu`, `gpu_model`, `slurm_partition`; locally they
    only count against --resources)."""
    r = dict(RES.stages.default) | dict(RES.stages.get(stage) or {})
    out = {"mem_mb": int(r["mem_mb"]), "runtime": int(r["runtime"])}
    if r["gpu"]:
        out["gpu"] = int(r["gpu"])
        if RES.gpu_model:
            out["gpu_model"] = str(RES.gpu_model)
        if RES.gpu_partition:
            out["slurm_partition"] = str(RES.gpu_partition)
    return int(r["threads"]), out


def show_generations(plan):
    for point in plan.finals:
        out = point["generate"].path / "generation.txt"
        if out.exists():
            label = " ".join(point["generate"].overrides) or "defaults"
            print(f"\n=== generation ({label}) -> {out}\n{out.read_text()}", file=sys.stderr)
