"""The build plan: which artifacts a configuration needs, and the key (hence path) of each.

One plan serves Snakemake (the Snakefile asks it for paths), every stage process (which asks it
where to write and what to read) and DVC (generated from it). A recipe (`Recipe`: a table of
`StageSpec` rows and its config checks) says what the stages are; this module knows none.

A stage's key hashes what the artifact is built from: its own resolved config slice, the keys of
its inputs, the content hash of the data files it reads, the version of its code (its module and
what that imports for the computation, plus library versions: `codeversion`) and the runner's
format number. So a LoRA-only change moves finetune onward to new keys and leaves quantize and
export where they are; a second run finds every path built and does nothing.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from modelmake.core.errors import ModelmakeError
from modelmake.graph.codeversion import code_version, module_path
from modelmake.graph.config import compose
from modelmake.graph.nodes import Node, Plan, Recipe, StageSpec
from modelmake.graph.overrides import expand_presets, expand_sweep, overrides_from_config, quote_override
from modelmake.graph.runner import RUNNER_FORMAT

__all__ = ["KEY_LEN", "Node", "Plan", "Recipe", "StageSpec", "build_plan", "digest", "stage_command", "stage_node"]

KEY_LEN = 12  # hex characters of the key in a folder name; the cache addresses the full digest


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _resolved(cfg: DictConfig, field: str):
    v = OmegaConf.select(cfg, field, throw_on_missing=True)
    return OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v


def _keyed(spec: StageSpec, cfg: DictConfig, recipe: Recipe) -> tuple[dict, dict]:
    """The stage's config slice (groups or dotted fields; `unkeyed` fields left out: the artifact
    holds only what its key determines) and the part of it keyed (file paths left out: their
    content is keyed instead)."""
    config = {g: _resolved(cfg, g) for g in spec.config}
    for field in spec.unkeyed:
        group, _, name = field.partition(".")
        if isinstance(config.get(group), dict):
            config[group].pop(name, None)
    keyed = {g: {k: v for k, v in c.items() if k not in recipe.path_fields.get(g, ())} if isinstance(c, dict) else c
             for g, c in config.items()}
    return config, keyed


def make_node(spec: StageSpec, cfg: DictConfig, recipe: Recipe, inputs: dict[str, Node],
              overrides: tuple[str, ...], extra: dict | None = None) -> Node:
    config, keyed = _keyed(spec, cfg, recipe)
    data = spec.data(cfg) if spec.data else {}
    code = code_version(module_path(spec.module), spec.libraries)
    full = digest({
        "stage": spec.name,
        "config": keyed,
        "inputs": {i: n.digest for i, n in inputs.items()},
        "data": sorted(data.values()),  # content, not where it lies
        "code": code["sha256"],
        "format": RUNNER_FORMAT,
        **(extra or {}),
    })
    key = full[:KEY_LEN]
    return Node(spec.name, key, Path(cfg.artifacts) / spec.name / key, config, inputs, data, code, overrides, full)


def plan_point(cfg: DictConfig, recipe: Recipe, overrides: tuple[str, ...] = (),
               into: Plan | None = None) -> dict[str, Node]:
    """Nodes of every per-point stage for one resolved configuration."""
    nodes: dict[str, Node] = {}
    for spec in recipe.stages:  # in dependency order
        if spec.over_points or (spec.when is not None and not spec.when(cfg)):
            continue
        inputs = spec.inputs_for(cfg)
        missing = [i for i in inputs if i not in nodes]
        if missing:
            asked = f"config field '{spec.asked_by}': " if spec.asked_by else ""
            raise ModelmakeError(f"{asked}stage {spec.name} needs {', '.join(missing)}, which this "
                                 "configuration's graph does not have")
        node = make_node(spec, cfg, recipe, {i: nodes[i] for i in inputs}, overrides)
        if into is not None:
            node = into.nodes.setdefault((spec.name, node.key), node)
        nodes[spec.name] = node
    return nodes


def over_points_node(spec: StageSpec, plan: Plan, overrides: tuple[str, ...]) -> Node:
    """A stage over every point (the report): keyed by its inputs' keys in every point."""
    cfg = compose(plan.points[0], plan.recipe)
    inputs = {f"{stage}.{i}": point[stage] for i, point in enumerate(plan.finals) for stage in spec.inputs_for(cfg)}
    node = make_node(spec, cfg, plan.recipe, {}, overrides,
                     extra={"inputs": sorted(n.digest for n in inputs.values()), "points": len(plan.finals)})
    node.inputs = inputs
    return plan.nodes.setdefault((spec.name, node.key), node)


def relevant_overrides(node: Node, recipe: Recipe) -> tuple[str, ...]:
    """The overrides of `node`'s point that its path depends on (each one dropped in turn, kept if
    the path moves: its key, or the artifacts folder). So a command names only what matters to it
    and stays the same when another point (a release, a sweep) reaches the same artifact. Dropping
    one wrongly cannot go unseen: the stage would key elsewhere and refuse (MODELMAKE_EXPECT)."""
    kept = list(node.overrides)
    for o in node.overrides:
        trial = tuple(x for x in kept if x != o)
        try:
            same = plan_point(compose(trial, recipe), recipe).get(node.stage, None)
            same = same is not None and same.path == node.path
        except ModelmakeError:
            same = False
        if same:
            kept = list(trial)
    return tuple(kept)


def stage_command(node: Node, recipe: Recipe, python: str = "python") -> str:
    """The command that builds `node`: Snakemake's rules and dvc.yaml both run exactly this."""
    spec = recipe.spec(node.stage)
    overrides = node.overrides if spec.over_points else relevant_overrides(node, recipe)
    return " ".join([shlex.quote(python), "-m", "modelmake", "stage", node.stage, *map(shlex.quote, overrides)])


def build_plan(recipe: Recipe, config: dict | None = None, overrides: list[str] | None = None) -> Plan:
    """The plan for Snakemake's config dict (or raw Hydra overrides), sweeps expanded."""
    raw = expand_presets(list(overrides or []) + overrides_from_config(config or {}))
    ov = [quote_override(o, recipe.free_text) for o in raw]
    plan = Plan(recipe=recipe, points=expand_sweep(ov))
    for point in plan.points:
        plan.finals.append(plan_point(compose(point, recipe), recipe, point, into=plan))
    for spec in recipe.stages:
        if spec.over_points:
            plan.over_points[spec.name] = over_points_node(spec, plan, tuple(ov))
    return plan


def stage_node(recipe: Recipe, stage: str, overrides: list[str]) -> tuple[Node, DictConfig | None]:
    """The node a stage process builds for its command's overrides (and the config it reads)."""
    plan = build_plan(recipe, overrides=overrides)
    spec = recipe.spec(stage)
    if spec.over_points:
        return plan.over_points[stage], None
    if len(plan.points) != 1:
        raise ModelmakeError(f"stage {stage}: one point at a time (got a sweep of {len(plan.points)})")
    point = plan.finals[0]
    if stage not in point:
        raise ModelmakeError(f"stage {stage} is not in this configuration's graph")
    return point[stage], compose(plan.points[0], recipe)
