"""The Olive lab recipe as a build graph: its stages (`table`) and the checks a configuration
passes before any work (`checks`). What the rest of modelmake calls to plan the recipe."""

from __future__ import annotations

from omegaconf import DictConfig

from modelmake.graph import config as _config
from modelmake.graph import plan as _plan
from modelmake.graph.plan import Node, Plan
from modelmake.recipe.table import RECIPE

__all__ = ["RECIPE", "Node", "Plan", "build_plan", "compose", "stage_command", "stage_node"]


def build_plan(config: dict | None = None, overrides: list[str] | None = None) -> Plan:
    """The recipe's plan for Snakemake's config dict or raw Hydra overrides (sweeps expanded)."""
    return _plan.build_plan(RECIPE, config, overrides)


def compose(overrides: tuple[str, ...] = ()) -> DictConfig:
    """The resolved, checked config of one point."""
    return _config.compose(tuple(overrides), RECIPE)


def stage_command(node: Node, python: str = "python") -> str:
    return _plan.stage_command(node, RECIPE, python)


def stage_node(stage: str, overrides: list[str]) -> tuple[Node, DictConfig | None]:
    return _plan.stage_node(RECIPE, stage, overrides)
