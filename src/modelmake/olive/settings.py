"""What an import produces: the status of each Olive setting, the user's options, the table's rows,
and the mapped Hydra settings with the override form a user types."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelmake.graph.overrides import format_value
from modelmake.recipe.checks import FREE_TEXT

MISSING = object()

# Row status: what became of one Olive setting
TAKEN = "taken"              # the same setting here
DIFFERS = "differs"          # taken, but the same words compute something else here: the note says what
DEFAULT = "olive default"    # not in the config: Olive's default, carried over so the run is the same
ADDED = "modelmake adds"     # a stage modelmake's chain runs that the Olive workflow does not name
NOT_TAKEN = "not taken"      # no modelmake setting: the note says why
NO_EQUIVALENT = "no equivalent"  # a pass modelmake cannot run; --strict refuses the import

PHI35 = "microsoft/Phi-3.5-mini-instruct"   # conf/model/phi35_mini.yaml's source
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
AZUREML = re.compile(r"^azureml://registries/(?P<registry>[^/]+)/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$")
HF_URL = re.compile(r"^https://huggingface\.co/(?P<id>[^/]+/[^/]+)")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
GROUP_ORDER = ("model", "data", "quantize", "lora", "train", "export", "generate", "evaluate", "register", "resources")
STAGE_ORDER = ("quantize", "finetune", "export", "adapter", "merged")


@dataclass(frozen=True)
class Options:
    """What the user adds to an Olive config: where relative paths start, and choices Olive makes
    differently (trust in model code, a revision, a substitute model, the loss boundary)."""
    base: Path = Path(".")              # relative data and model paths start here
    model: str | None = None            # a conf/model group instead of the Olive input model (e.g. tiny_phi3)
    revision: str | None = None         # model.revision for a hub id (Olive reads the hub's current files)
    trust_remote_code: bool = False     # confirm the config's trust_remote_code (off otherwise)
    response_marker: str | None = None  # data.response_marker instead of the one derived from the template
    cpu: bool = False                   # export for CPU whatever execution provider the config names
    strict: bool = False                # refuse a pass modelmake has no equivalent for
    base_is: str = "the config's folder, where Olive's guide runs `olive run`"


@dataclass
class Row:
    origin: str                 # the Olive setting: its path in the config, or an olive command's flag
    value: Any                  # as the config has it (MISSING: a row of its own, no value)
    became: list[str]           # the Hydra overrides it became ([] when not taken)
    status: str = TAKEN
    note: str = ""
    order: int = 1 << 30        # the setting's place in the config (rows print in document order)


@dataclass
class Mapped:
    """An Olive workflow as modelmake settings."""
    values: dict[str, Any]               # Hydra key -> value ("model" -> a group choice, "lora.r" -> 64)
    origins: dict[str, str]              # Hydra key -> the Olive setting it came from
    rows: list[Row]
    until: str | None                    # the last stage of the chain the Olive workflow reaches
    warnings: list[str] = field(default_factory=list)

    def overrides(self) -> list[str]:
        """As a user types them (free text with `\\n` escapes; modelmake build quotes them for Hydra)."""
        return [f"{k}={override_value(k, v)}" for k, v in ordered(self.values)]


def ordered(values: dict[str, Any]) -> list[tuple[str, Any]]:
    def rank(item):
        key = item[0]
        group = key.split(".", 1)[0]
        return ("." in key, GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER))
    return sorted(values.items(), key=rank)  # stable: group choices first, then fields group by group


def override_value(key: str, v) -> str:
    """A value as a user types it after `key=` (free text with `\\n`/`\\t` escapes)."""
    if key in FREE_TEXT and isinstance(v, str):
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
    if isinstance(v, str):
        return hydra_string(key, v)
    if isinstance(v, float):
        return repr(v)
    return format_value(v)


def hydra_string(key: str, v: str) -> str:
    """`v` as Hydra will read it back exactly: bare where it can be, else quoted."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_override(f"{key}={v}")
        if not parsed.is_sweep_override() and parsed.value() == v:
            return v
    except HydraException:
        pass
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


def short(v, width: int = 48) -> str:
    s = json.dumps(v, ensure_ascii=False) if not isinstance(v, (int, float)) or isinstance(v, bool) else repr(v)
    return s if len(s) <= width else s[: width - 3] + "..."

