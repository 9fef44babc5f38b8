"""The build plan: which artifacts a configuration needs, and the key (hence path) of each.

One plan serves Snakemake (the Snakefile asks it for paths), every script (which asks it where
to write and what to read) and DVC (generated from it). A stage's key hashes what the stage is
built from: its own resolved config slice, the keys of its inputs, the content hash of the data
files it reads, and the version of its code (script + imported modelmake modules + libraries).
So a LoRA-only change moves finetune/adapter/generate to new keys and leaves quantize and export
where they are; a second run finds every path built and does nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from modelmake import hashcache, model_source
from modelmake.codeversion import code_version
from modelmake.errors import ModelmakeError

ROOT = Path(__file__).resolve().parent.parent.parent  # the project checkout
CONF_DIR = ROOT / "conf"
SCRIPTS_DIR = ROOT / "scripts"
KEY_LEN = 12


@dataclass(frozen=True)
class StageSpec:
    name: str
    config: tuple[str, ...]          # config groups whose resolved values go into the key
    inputs: tuple[str, ...]          # upstream stages
    libraries: tuple[str, ...]       # distributions whose versions go into the key


STAGES: dict[str, StageSpec] = {s.name: s for s in [
    StageSpec("base", ("model",), (), ("torch", "transformers", "tokenizers", "safetensors")),
    # the dataset is rendered for a model: with data.template=chat, through its tokenizer's template
    StageSpec("dataset", ("data",), ("base",), ("transformers", "tokenizers")),
    StageSpec("quantize", ("quantize",), ("base", "dataset"),
              ("torch", "transformers", "autoawq", "safetensors")),
    StageSpec("finetune", ("lora", "train"), ("quantize", "dataset"),
              ("torch", "transformers", "autoawq", "peft", "safetensors")),
    StageSpec("export", ("export",), ("quantize",),
              ("torch", "transformers", "autoawq", "onnx", "onnx-ir", "onnxruntime", "onnxruntime-genai")),
    StageSpec("adapter", (), ("finetune", "export"), ("onnx", "onnxruntime", "safetensors", "numpy")),
    StageSpec("generate", ("generate",), ("dataset", "export", "adapter"), ("onnxruntime-genai",)),
    StageSpec("evaluate", ("evaluate", "train"), ("base", "dataset", "quantize", "finetune", "export", "adapter"),
              ("torch", "transformers", "autoawq", "peft", "onnxruntime-genai")),
    StageSpec("register", ("register",), ("export", "adapter", "generate"), ("mlflow", "azure-ai-ml")),
]}
FINAL_STAGE = "register"
# The report is not per point: it reads every point of a run or sweep (see report_node).
REPORT_STAGE = "report"
REPORT_INPUTS = ("evaluate", "finetune", "generate")
# Fields naming data files: keyed by the files' content (see stage_data), not by where they lie.
CHAT = "chat"  # data.template: render records through the tokenizer's own chat template
PATH_FIELDS = {"data": ("path",), "model": ("corpus", "source", "package")}


@dataclass
class Node:
    stage: str
    key: str
    path: Path                       # the artifact folder, relative to the project root
    config: dict
    inputs: dict[str, "Node"]
    data: dict[str, str]             # data file path -> sha256
    code: dict
    overrides: tuple[str, ...] = ()  # the Hydra overrides of the point that first asked for it

    @property
    def manifest(self) -> Path:
        return self.path / "manifest.json"  # the file target, written last

    def provenance(self) -> dict:
        return {
            "stage": self.stage,
            "key": self.key,
            "path": str(self.path),
            "config": self.config,
            "inputs": {k: {"key": n.key, "path": str(n.path)} for k, n in self.inputs.items()},
            "data": self.data,
            "code": self.code,
            "overrides": list(self.overrides),
        }


@dataclass
class Plan:
    points: list[tuple[str, ...]]                       # the override list of each sweep point
    finals: list[dict[str, Node]] = field(default_factory=list)  # per point: stage -> node
    nodes: dict[tuple[str, str], Node] = field(default_factory=dict)
    report: Node | None = None                          # one report over every point

    def node(self, stage: str, key: str) -> Node:
        try:
            return self.nodes[(stage, key)]
        except KeyError:
            raise ModelmakeError(f"no {stage} artifact with key {key} in this configuration") from None

    def targets(self, stage: str = FINAL_STAGE) -> list[str]:
        if stage == REPORT_STAGE:
            return [str(self.report.manifest)]
        return sorted({str(p[stage].manifest) for p in self.finals})

    def keys(self, stage: str) -> list[str]:
        return sorted({p[stage].key for p in self.finals})


# --- data hashing ---------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    return hashcache.file_sha256(path)


def _data_file(field_name: str, value: str) -> Path:
    path = Path(value)
    full = path if path.is_absolute() else ROOT / path
    if not full.is_file():
        raise ModelmakeError(f"{field_name}: data file not found: {value}")
    return full


def stage_data(stage: str, cfg: DictConfig) -> dict[str, str]:
    if stage == "dataset":
        return {cfg.data.path: file_sha256(_data_file("data.path", cfg.data.path))}
    if stage == "base":
        return model_source.data(cfg.model)
    return {}


# --- keys -----------------------------------------------------------------------------------
def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:KEY_LEN]


def script_path(stage: str) -> Path:
    return SCRIPTS_DIR / f"{stage}.py"


def relevant_overrides(node: "Node") -> tuple[str, ...]:
    """The overrides of `node`'s point that its path depends on (each one dropped in turn, kept if
    the path moves: its key, or the artifacts folder). So a command names only what matters to it
    and stays the same when another point (a release, a sweep) reaches the same artifact. Dropping
    one wrongly cannot go unseen: the script would key elsewhere and refuse (MODELMAKE_EXPECT)."""
    kept = list(node.overrides)
    for o in node.overrides:
        trial = tuple(x for x in kept if x != o)
        try:
            same = plan_point(compose(trial))[node.stage].path == node.path
        except ModelmakeError:
            same = False
        if same:
            kept = list(trial)
    return tuple(kept)


def stage_command(node: "Node", python: str = "python") -> str:
    """The command that builds `node`: Snakemake's rules and dvc.yaml both run exactly this."""
    import shlex

    overrides = node.overrides if node.stage == REPORT_STAGE else relevant_overrides(node)
    return " ".join([shlex.quote(python), f"scripts/{node.stage}.py", *map(shlex.quote, overrides)])


def plan_point(cfg: DictConfig, overrides: tuple[str, ...] = (), into: Plan | None = None) -> dict[str, Node]:
    """Nodes of every stage for one resolved configuration."""
    artifacts = Path(cfg.artifacts)
    nodes: dict[str, Node] = {}
    for name, spec in STAGES.items():  # STAGES is in dependency order
        config = {g: OmegaConf.to_container(cfg[g], resolve=True) for g in spec.config}
        keyed = {g: {k: v for k, v in c.items() if k not in PATH_FIELDS.get(g, ())} for g, c in config.items()}
        inputs = {i: nodes[i] for i in spec.inputs}
        data = stage_data(name, cfg)
        code = code_version(script_path(name), spec.libraries)
        key = digest({
            "stage": name,
            "config": keyed,
            "inputs": {i: n.key for i, n in inputs.items()},
            "data": sorted(data.values()),  # content, not where it lies
            "code": code["sha256"],
        })
        node = Node(name, key, artifacts / name / key, config, inputs, data, code, overrides)
        if into is not None:
            node = into.nodes.setdefault((name, key), node)
        nodes[name] = node
    return nodes


# --- configuration --------------------------------------------------------------------------
@lru_cache(maxsize=256)
def compose(overrides: tuple[str, ...]) -> DictConfig:
    """The resolved config for these Hydra overrides; unknown keys are refused."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise ModelmakeError(f"config overrides {list(overrides)}: {e}") from None
    validate(cfg)
    return cfg


# Free-text fields: an override of one is always one literal string (a comma in a prompt is not a
# sweep, braces in a template are not a dict), and `\n`, `\t` in it are escapes, as in Olive's
# --text_template, so a template fits on a command line.
FREE_TEXT = ("data.template", "data.response_marker", "data.system", "generate.prompt")
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape(text: str) -> str:
    return re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], text)


def normalize(cfg: DictConfig) -> DictConfig:
    """Escapes in free-text fields resolved, in place, before anything reads or keys them."""
    for name in FREE_TEXT:
        v = OmegaConf.select(cfg, name)
        if isinstance(v, str):
            OmegaConf.update(cfg, name, unescape(v))
    return cfg


def _parses(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        OverridesParser.create().parse_override(override)
        return True
    except HydraException:
        return False


def quote_override(override: str) -> str:
    """An override as Hydra must receive it: a free-text field's value, or any value Hydra's lexer
    would refuse (newlines, braces, `|`), single-quoted. Newlines stay newlines (Hydra's quoted
    values hold them), so a path with one in its name is kept exact."""
    key, sep, value = override.partition("=")
    if not sep or value[:1] in ("'", '"'):
        return override
    if key.lstrip("+~") not in FREE_TEXT and "\n" not in value and "\t" not in value and _parses(override):
        return override
    value = value.replace("'", "\\'")
    if value.endswith("\\"):
        value += "\\"  # a trailing backslash would escape the closing quote
    return f"{key}='{value}'"


def validate(cfg: DictConfig) -> None:
    """Schema checks Hydra's struct mode does not do: types and ranges of the fields that matter."""
    def need(cond: bool, field_name: str, msg: str):
        if not cond:
            raise ModelmakeError(f"config field '{field_name}': {msg}")

    def positive_int(field_name: str):
        v = OmegaConf.select(cfg, field_name)
        need(isinstance(v, int) and not isinstance(v, bool) and v > 0, field_name, f"must be a positive integer, got {v!r}")

    def positive_number(field_name: str):
        v = OmegaConf.select(cfg, field_name)
        need(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, field_name, f"must be a positive number, got {v!r}")

    _check_artifacts(cfg.artifacts)
    need(cfg.model.kind in ("tiny", "gguf", "pretrained"), "model.kind",
         f"must be 'tiny', 'gguf' or 'pretrained', got {cfg.model.kind!r}")
    for f in ("lora.r", "train.steps", "train.batch_size", "train.max_seq_len", "quantize.group_size",
              "quantize.calib_samples", "quantize.calib_seq_len", "generate.max_new_tokens", "threads"):
        positive_int(f)
    for f in ("lora.alpha", "train.lr"):
        positive_number(f)
    need(0 <= cfg.lora.dropout < 1, "lora.dropout", f"must be in [0, 1), got {cfg.lora.dropout!r}")
    need(0 < cfg.data.eval_fraction < 1, "data.eval_fraction", f"must be in (0, 1), got {cfg.data.eval_fraction!r}")
    need(cfg.quantize.w_bit == 4, "quantize.w_bit", "AutoAWQ GEMM supports 4 bits only")
    need(str(cfg.quantize.version).lower() == "gemm", "quantize.version", "the ORT-genai builder reads GEMM packing only")
    need(cfg.export.precision in ("int4", "fp32"), "export.precision", f"must be int4 or fp32, got {cfg.export.precision!r}")
    need(cfg.export.execution_provider in ("cpu", "cuda", "dml"), "export.execution_provider",
         f"must be cpu, cuda or dml, got {cfg.export.execution_provider!r}")
    for f in ("train.weight_decay", "train.warmup_steps"):  # torch would fail (or silently ramp) late
        v = OmegaConf.select(cfg, f)
        need(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0, f, f"must be >= 0, got {v!r}")
    need(isinstance(cfg.train.warmup_steps, int), "train.warmup_steps",
         f"must be a whole number of steps, got {cfg.train.warmup_steps!r}")
    need_runtime(cfg.export.execution_provider)
    need(bool(cfg.model.trust_remote_code) is False or cfg.model.kind == "pretrained", "model.trust_remote_code",
         "only meaningful for a pretrained model")
    normalize(cfg)
    # the model itself, before any work: found, readable, an architecture every stage supports
    model = model_source.describe(cfg.model)
    _validate_targets(cfg, family_of(model["architecture"]) if model else None)
    if cfg.data.template == CHAT:
        need(model.get("chat_template") is not False, "data.template",
             f"'chat' needs a chat template, and the tokenizer of model '{cfg.model.name}' has none; "
             "give the template as text (Olive style: '<|user|>\\n{prompt}...')")
    else:
        from modelmake.dataset import template_fields

        template_fields(cfg.data.template)
        need(not cfg.data.response_marker or cfg.data.response_marker in cfg.data.template, "data.response_marker",
             f"{cfg.data.response_marker!r} does not occur in data.template {cfg.data.template!r}")
    for f in ("hidden_size", "intermediate_size"):
        if model.get(f):
            need(model[f] % cfg.quantize.group_size == 0, "quantize.group_size",
                 f"{cfg.quantize.group_size} does not divide the model's {f}={model[f]}")


def _check_artifacts(value) -> None:
    """`artifacts`: a folder (made if missing). Braces would be read as Snakemake wildcards in every
    rule's output, and control characters make paths no tool prints back faithfully."""
    where = "config field 'artifacts'"
    if not isinstance(value, str) or not value.strip():
        raise ModelmakeError(f"{where}: must be a folder path, got {value!r}")
    if bad := sorted({c for c in value if c in "{}" or ord(c) < 32 or ord(c) == 127}):
        raise ModelmakeError(f"{where}: {value!r} holds {bad}, which a build graph path cannot hold")
    path = Path(value) if Path(value).is_absolute() else ROOT / value
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise ModelmakeError(f"{where}: {p} is not a folder")
            break


def family_of(architecture: str):
    from modelmake.families import FAMILIES, family_for_config

    return FAMILIES.get(architecture) or family_for_config({"architectures": [architecture]}, "model.source")


def _validate_targets(cfg: DictConfig, family) -> None:
    """LoRA target lists: `auto`, or names of the model family's modules. Checked against the
    family when the plan knows it without a download, else against every supported family;
    finetune and export check the real config again."""
    from modelmake.families import FAMILIES, all_target_names, resolve_export_targets, resolve_lora_targets

    for field_name, resolve in (("lora.target_modules", resolve_lora_targets),
                                ("export.lora_targets", resolve_export_targets)):
        value = OmegaConf.select(cfg, field_name)
        value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        if family is not None:
            resolve(value, family, field_name)
        elif isinstance(value, str):
            if value != "auto":
                raise ModelmakeError(f"config field '{field_name}': must be 'auto' or a list of module names, got {value!r}")
        else:
            bad = [v for v in value or [] if str(v) not in all_target_names()]
            if bad or not value:
                raise ModelmakeError(
                    f"config field '{field_name}': {bad or '[]'} name no module of any supported family "
                    f"({', '.join(sorted(FAMILIES))}); use 'auto' or their module names")


# export.execution_provider -> the onnxruntime provider its graph needs at generate/evaluate time
PROVIDERS = {"cuda": "CUDAExecutionProvider", "dml": "DmlExecutionProvider"}


def need_runtime(provider: str) -> None:
    """Refuse a provider this machine's onnxruntime cannot run before export is built, not in
    generate after it (onnxruntime is imported only for a non-CPU provider)."""
    if provider not in PROVIDERS:
        return
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if PROVIDERS[provider] not in available:
        raise ModelmakeError(
            f"config field 'export.execution_provider': {provider} needs {PROVIDERS[provider]}, which this "
            f"onnxruntime ({onnxruntime.__version__}) does not provide (available: {available}); install "
            "its GPU build (environment.yml) or build on a machine that has it")


def format_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(format_value(x) for x in v) + "]"
    return str(v)


OVERRIDES_KEY = "overrides"


def overrides_from_config(config: dict) -> list[str]:
    """Snakemake's `--config` (already YAML-parsed by Snakemake) as Hydra overrides.

    Snakemake 9 refuses dotted keys (`--config lora.r=16` fails to parse), so two forms reach
    Hydra: nested YAML, `--config lora='{r: 16}'` -> `lora.r=16`, and a verbatim list,
    `--config overrides='["lora.r=8,16", "train.lr=1e-3"]'` (what `modelmake build` passes).
    """
    out: list[str] = []

    def walk(prefix: str, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out.append(f"{prefix}={format_value(value)}")

    for key, value in config.items():
        if key == OVERRIDES_KEY:
            out.extend([value] if isinstance(value, str) else [str(v) for v in value])
        else:
            walk(key, value)
    return out


def expand_sweep(overrides: list[str]) -> list[tuple[str, ...]]:
    """Hydra's sweep syntax (`lora.r=8,16`, `range(...)`, `choice(...)`) as a list of points."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ModelmakeError(f"config overrides {overrides}: {e}") from None
    axes = []
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([o.input_line])
    return [tuple(p) for p in itertools.product(*axes)] or [()]


def report_node(plan: Plan, overrides: tuple[str, ...]) -> Node:
    """The report over every point: keyed by their evaluate/finetune/generate keys and its config."""
    cfg = compose(plan.points[0])
    config = {"report": OmegaConf.to_container(cfg.report, resolve=True)}
    inputs = {f"{stage}.{i}": point[stage] for i, point in enumerate(plan.finals) for stage in REPORT_INPUTS}
    code = code_version(script_path(REPORT_STAGE), ("matplotlib",))
    key = digest({"stage": REPORT_STAGE, "config": config, "inputs": sorted(n.key for n in inputs.values()),
                  "points": len(plan.finals), "code": code["sha256"]})
    node = Node(REPORT_STAGE, key, Path(cfg.artifacts) / REPORT_STAGE / key, config, inputs, {}, code, overrides)
    return plan.nodes.setdefault((REPORT_STAGE, key), node)


def expand_presets(overrides: list[str]) -> list[str]:
    """`sweep=NAME` -> the overrides listed in conf/sweep/NAME.yaml (a named sweep)."""
    out = []
    for o in overrides:
        if o.startswith("sweep="):
            path = CONF_DIR / "sweep" / f"{o.split('=', 1)[1]}.yaml"
            if not path.is_file():
                known = sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml"))
                raise ModelmakeError(f"{o}: no sweep preset {path.name} (known: {known})")
            out.extend(str(x) for x in OmegaConf.load(path).overrides)
        else:
            out.append(o)
    return out


def build_plan(config: dict | None = None, overrides: list[str] | None = None) -> Plan:
    """The plan for Snakemake's config dict (or raw Hydra overrides), sweeps expanded."""
    ov = [quote_override(o) for o in expand_presets(list(overrides or []) + overrides_from_config(config or {}))]
    points = expand_sweep(ov)
    plan = Plan(points=points)
    for point in points:
        plan.finals.append(plan_point(compose(point), point, into=plan))
    plan.report = report_node(plan, tuple(ov))
    return plan


def plan_for_cfg(cfg: DictConfig) -> dict[str, Node]:
    """Nodes for a config an entry point received from @hydra.main."""
    validate(cfg)
    return plan_point(cfg)
