"""What a plan is made of: a recipe (its stage table and checks), nodes (one artifact each, with
its key and inputs) and the plan over every point of a run or sweep. Data only; graph.plan
computes them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from modelmake.core.errors import ModelmakeError
from modelmake.core.paths import ROOT


def recorded_name(path: str) -> str:
    """A data file as a manifest names it: the same on every clone, so a rebuild elsewhere writes the
    same bytes (dvc.lock stays as committed). A file of an installed package (a shipped GGUF) is
    `site-packages/<package>/...` wherever the environment lives; a file of the project is
    relative to it; anything else keeps its absolute path (its content is in the key either way)."""
    import sysconfig

    p = Path(path)
    if not p.is_absolute():
        return path
    for lib in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        if p.is_relative_to(lib):
            return str(Path("site-packages") / p.relative_to(lib))
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else path


@dataclass(frozen=True)
class StageSpec:
    name: str
    doc: str                                  # what the artifact is, one line (rules, plan, docs)
    # config groups (or dotted fields, `export.merge`) whose resolved values go into the key
    config: tuple[str, ...]
    # upstream stages; or, where the config chooses them (the merged export replaces the adapter in
    # generate), a function of the config giving them
    inputs: tuple[str, ...] | Callable[[DictConfig], tuple[str, ...]] = ()
    libraries: tuple[str, ...] = ()           # distributions whose versions go into the key
    data: Callable[[DictConfig], dict[str, str]] | None = None  # data files it reads -> sha256
    when: Callable[[DictConfig], bool] | None = None            # in the graph only when this holds
    asked_by: str = ""                        # the config field `when` reads (named in its refusals)
    unkeyed: tuple[str, ...] = ()             # dotted fields of `config` this stage does not read
    over_points: bool = False                 # one node over every point of a run or sweep (report)
    outputs: tuple[str, ...] = ()             # files beside the manifest Snakemake should name
    # a rebuild reproduces the artifact, so DVC versions it (dvc.yaml) and the shared cache holds it:
    # not a side effect's record (a registration) nor a view of one machine's measurements (the
    # report's decode speeds)
    shared: bool = True

    def inputs_for(self, cfg: DictConfig) -> tuple[str, ...]:
        return tuple(self.inputs(cfg)) if callable(self.inputs) else self.inputs

    @property
    def module(self) -> str:
        """Its `build(node, out, cfg)`: where the code key starts."""
        return f"modelmake.stages.{self.name}"


@dataclass(frozen=True, eq=False)  # hashed by identity: compose() caches per recipe
class Recipe:
    stages: tuple[StageSpec, ...]             # in dependency order
    final: str                                # the stage a point's build ends with
    path_fields: dict[str, tuple[str, ...]]   # config fields naming files: keyed by content, not path
    free_text: tuple[str, ...]                # fields whose overrides are one literal string
    check: Callable[[DictConfig], None]       # the recipe's checks of a composed config

    def spec(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        raise ModelmakeError(f"no stage '{name}' (stages: {', '.join(s.name for s in self.stages)})")


@dataclass
class Node:
    stage: str
    key: str
    path: Path                       # the artifact folder, relative to the project root
    config: dict
    inputs: dict[str, Node]
    data: dict[str, str]             # data file path -> sha256
    code: dict
    overrides: tuple[str, ...] = ()  # the Hydra overrides of the point that first asked for it
    digest: str = ""                 # the full sha256 the key is cut from

    @property
    def manifest(self) -> Path:
        return self.path / "manifest.json"  # the file target, written last

    def provenance(self) -> dict:
        return {
            "stage": self.stage,
            "key": self.key,
            "digest": self.digest,
            "path": str(self.path),
            "config": self.config,
            "inputs": {k: {"key": n.key, "path": str(n.path)} for k, n in self.inputs.items()},
            "data": {recorded_name(path): digest for path, digest in self.data.items()},
            "code": self.code,
        }


@dataclass
class Plan:
    recipe: Recipe
    points: list[tuple[str, ...]]                       # the override list of each sweep point
    finals: list[dict[str, Node]] = field(default_factory=list)  # per point: stage -> node
    nodes: dict[tuple[str, str], Node] = field(default_factory=dict)
    over_points: dict[str, Node] = field(default_factory=dict)   # stage -> its one node (the report)

    def node(self, stage: str, key: str) -> Node:
        try:
            return self.nodes[(stage, key)]
        except KeyError:
            raise ModelmakeError(f"no {stage} artifact with key {key} in this configuration") from None

    @property
    def report(self) -> Node | None:
        return next(iter(self.over_points.values()), None)

    def targets(self, stage: str | None = None) -> list[str]:
        stage = stage or self.recipe.final
        if stage in self.over_points:
            return [str(self.over_points[stage].manifest)]
        return sorted({str(p[stage].manifest) for p in self.finals if stage in p})

    def needed(self, stage: str | None = None) -> list[Node]:
        """The nodes `targets(stage)` name and everything they read, in plan order."""
        stage = stage or self.recipe.final
        over = self.over_points.get(stage)
        stack = [over] if over is not None else [p[stage] for p in self.finals if stage in p]
        seen: set[tuple[str, str]] = set()
        while stack:
            n = stack.pop()
            if (n.stage, n.key) not in seen:
                seen.add((n.stage, n.key))
                stack.extend(n.inputs.values())
        return [n for k, n in self.nodes.items() if k in seen]

    def keys(self, stage: str) -> list[str]:
        return sorted({p[stage].key for p in self.finals if stage in p})
