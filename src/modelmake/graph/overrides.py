"""Override syntax: how Hydra overrides arrive (the command line, Snakemake's `--config`, named
sweeps), how one is quoted so Hydra reads exactly what the user typed, and sweeps as points."""

from __future__ import annotations

import itertools
import re

from omegaconf import OmegaConf

from modelmake.core.errors import ModelmakeError
from modelmake.core.paths import CONF_DIR

OVERRIDES_KEY = "overrides"  # --config overrides='[...]': a verbatim list (what `modelmake build` passes)
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape(text: str) -> str:
    """`\\n`, `\\t` and `\\\\` in a free-text field are escapes, as in Olive's --text_template, so a
    template fits on a command line."""
    return re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], text)


def _parses(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        OverridesParser.create().parse_override(override)
        return True
    except HydraException:
        return False


def quote_override(override: str, free_text: tuple[str, ...] = ()) -> str:
    """An override as Hydra must receive it: a free-text field's value (a comma in a prompt is not a
    sweep, braces in a template are not a dict), or any value Hydra's lexer would refuse (newlines,
    `;`, `|`), single-quoted. Newlines stay newlines (Hydra's quoted values hold them), so a path
    with one in its name is kept exact."""
    key, sep, value = override.partition("=")
    if not sep or value[:1] in ("'", '"'):
        return override
    if key.lstrip("+~") not in free_text and "\n" not in value and "\t" not in value and _parses(override):
        return override
    value = value.replace("'", "\\'")
    if value.endswith("\\"):
        value += "\\"  # a trailing backslash would escape the closing quote
    return f"{key}='{value}'"


def format_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(format_value(x) for x in v) + "]"
    return str(v)


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
