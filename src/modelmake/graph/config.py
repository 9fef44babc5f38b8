"""Config composition: Hydra overrides of `conf/` into one resolved, checked config.

The checks that are the build graph's own (the artifacts folder, keys that do not exist) are
here; a recipe adds its own (`Recipe.check`), run on the composed config before any work.
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from modelmake.core.errors import ModelmakeError
from modelmake.core.paths import CONF_DIR, ROOT
from modelmake.graph.cache import setting as cache_setting
from modelmake.graph.nodes import Recipe
from modelmake.graph.overrides import unescape


@lru_cache(maxsize=256)
def compose(overrides: tuple[str, ...], recipe: Recipe) -> DictConfig:
    """The resolved config for these Hydra overrides, checked; unknown keys are refused."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    for o in overrides:
        if o.startswith("+"):  # Hydra's own hint for a typo ("use +lora.rank=8") would add a dead key
            key = o.lstrip("+").split("=", 1)[0]
            raise ModelmakeError(f"config override '{o}': modelmake's config takes no new keys (one would change "
                                 f"no setting, only the artifact's key){_did_you_mean(key, overrides)}")
    try:
        cfg = _hydra_compose(overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise ModelmakeError(f"config overrides {list(overrides)}: {_explain(e, overrides)}") from None
    check_artifacts(cfg.artifacts)
    cache_setting(cfg)  # a malformed cache URL is refused here, naming its field
    for name in recipe.free_text:
        v = OmegaConf.select(cfg, name)
        if isinstance(v, str):
            OmegaConf.update(cfg, name, unescape(v))
    recipe.check(cfg)
    return cfg


def _hydra_compose(overrides: tuple[str, ...]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def _explain(e: Exception, overrides: tuple[str, ...]) -> str:
    """Hydra's message, with its "use +key=value" hint replaced by the nearest real key."""
    text = str(e)
    m = re.search(r"Could not override '([^']+)'", text)
    if m and m.group(1) not in _known(overrides):
        return f"no config field '{m.group(1)}'{_did_you_mean(m.group(1), overrides)}"
    g = re.search(r"Could not find '([\w/]+)/([^'/]+)'", text)
    if g and (CONF_DIR / g.group(1)).is_dir():
        options = sorted(p.stem for p in (CONF_DIR / g.group(1)).glob("*.yaml"))
        near = difflib.get_close_matches(g.group(2), options, n=1, cutoff=0.6)
        return (f"no option '{g.group(2)}' in config group '{g.group(1)}' (options: {', '.join(options)})"
                + (f"; did you mean '{near[0]}'?" if near else ""))
    return text


def _known(overrides: tuple[str, ...]) -> list[str]:
    """Every field of the config these overrides' group choices compose."""
    groups = tuple(o for o in overrides if "=" in o and "." not in o.split("=", 1)[0].lstrip("+~"))
    try:
        return _field_names(groups)
    except Exception:  # noqa: BLE001 - a group choice that does not compose: the defaults' fields
        return _field_names(())


def _did_you_mean(key: str, overrides: tuple[str, ...]) -> str:
    near = difflib.get_close_matches(key, _known(overrides), n=1, cutoff=0.6)
    return f"; did you mean '{near[0]}'?" if near else ""


@lru_cache(maxsize=32)
def _field_names(groups: tuple[str, ...]) -> list[str]:
    names = []

    def walk(prefix, node):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            names.append(prefix)

    walk("", OmegaConf.to_container(_hydra_compose(groups), resolve=False))
    return names


def check_artifacts(value) -> None:
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
