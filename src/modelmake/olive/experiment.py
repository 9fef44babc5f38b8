"""Writing: conf/experiment/NAME.yaml (atomically, read back before it is written), and the table."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from omegaconf import OmegaConf

from modelmake.core.atomic import write_text
from modelmake.core.errors import ModelmakeError
from modelmake.core.paths import CONF_DIR
from modelmake.graph.overrides import unescape
from modelmake.olive.document import read_config
from modelmake.olive.mapper import map_config
from modelmake.olive.settings import DIFFERS, MISSING, NAME, NO_EQUIVALENT, NOT_TAKEN, Mapped, Options, ordered, short
from modelmake.recipe.checks import FREE_TEXT


def yaml_scalar(v, free_text: bool = False) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        s = repr(v)
        if "e" in s and "." not in s.split("e")[0]:  # YAML 1.1 floats need a dot: 2e-05 -> 2.0e-05
            s = s.replace("e", ".0e", 1)
        return s
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(yaml_scalar(x) for x in v) + "]"
    text = str(v)
    if free_text:  # modelmake reads `\n`, `\t`, `\\` in these fields as escapes: keep a real backslash one
        text = text.replace("\\", "\\\\")
    return json.dumps(text.replace("${", "\\${"), ensure_ascii=False)  # no OmegaConf interpolation


def experiment_text(name: str, mapped: Mapped, command: str) -> str:
    """conf/experiment/NAME.yaml: the command that built it and the one that runs it, then the
    settings, each with the Olive setting it came from; then what was not taken."""
    until = f"\n#   modelmake build --until {mapped.until} experiment={name}   (stops where the Olive workflow ends)" \
        if mapped.until and mapped.until != "register" else ""
    lines = ["# @package _global_",
             f"# Imported from an Olive workflow by `{command}`:".replace("\n", "\\n"),
             f"#   modelmake build experiment={name}{until}",
             "# Each setting names the Olive setting it came from; `modelmake olive import` printed every setting",
             "# of the config and what became of it (summarized at the end)."]
    items = ordered(mapped.values)
    groups = [(k, v) for k, v in items if "." not in k]
    if groups:
        lines.append("defaults:")
        for k, v in groups:
            lines.append(f"  - override /{k}: {v}   # {mapped.origins.get(k, '')}")
    current = None
    for k, v in items:
        if "." not in k:
            continue
        group, rest = k.split(".", 1)
        if group != current:
            lines.append(f"{group}:")
            current = group
        assert "." not in rest, k  # every mapped key is one level below its group
        lines.append(f"  {rest}: {yaml_scalar(v, k in FREE_TEXT)}   # {mapped.origins.get(k, '')}")
    notes = [r for r in mapped.rows if r.status in (DIFFERS, NOT_TAKEN, NO_EQUIVALENT)]
    if notes:
        lines.append("# Not taken, or meaning something else here:")
        lines += [f"#   {r.origin}: {r.note}".replace("\n", " ") for r in notes]
    return "\n".join(lines) + "\n"


def check_text(text: str, mapped: Mapped) -> None:
    """The file says exactly what was mapped: read back as Hydra will read it."""
    doc = OmegaConf.create(text)
    for k, v in mapped.values.items():
        if "." not in k:
            continue
        got = OmegaConf.select(doc, k)
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        if k in FREE_TEXT and isinstance(got, str):
            got = unescape(got)
        if got != v:
            raise ModelmakeError(f"experiment file: {k} reads back as {got!r}, not {v!r} (a bug in modelmake olive)")


def table(mapped: Mapped) -> str:
    """One line per Olive setting: what it was, what it became, and why, where it is not the same."""
    rows = [(r.status, r.origin + ("" if r.value is MISSING else f" = {short(r.value)}"),
             " ".join(r.became) or "-", r.note) for r in mapped.rows]
    w0 = max(len(s) for s, *_ in rows) if rows else 0
    w1 = min(70, max((len(o) for _, o, *_ in rows), default=0))
    w2 = min(60, max((len(b) for *_, b, _ in rows), default=0))
    out = [f"{'':<{w0}}  {'Olive setting':<{w1}}  {'modelmake':<{w2}}  note"]
    for status, origin, became, note in rows:
        out.append(f"{status:<{w0}}  {origin:<{w1}}  {became:<{w2}}  {note}".rstrip())
    return "\n".join(out)


def default_name(tree: dict, path: Path) -> str:
    name = str(tree.get("workflow_id") or (tree.get("engine") or {}).get("workflow_id") or path.stem)
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_-") or "olive"


def import_config(path: Path, name: str | None, options: Options, command: str,
                  conf_dir: Path = CONF_DIR, force: bool = False) -> tuple[Path, Mapped]:
    """Read an Olive config and write conf/experiment/NAME.yaml (atomically); returns its path and the mapping."""
    path = Path(path)
    tree = read_config(path)
    name = name or default_name(tree, path)
    if not NAME.match(name):
        raise ModelmakeError(f"--name {name!r}: letters, digits, '_' and '-' only (it becomes experiment={name})")
    target = Path(conf_dir) / "experiment" / f"{name}.yaml"
    if target.exists() and not force:
        raise ModelmakeError(f"{target}: exists; choose another --name or pass --force to replace it")
    check_model_group(options.model, conf_dir)
    if options.base == Path("."):  # Olive's guide runs `olive run` in the config's folder
        options = dataclasses.replace(options, base=path.resolve().parent)
    mapped = map_config(tree, str(path), options)
    text = experiment_text(name, mapped, command)
    check_text(text, mapped)
    mapped.warnings += plan_warnings(mapped)
    write_text(target, text)
    return target, mapped


def check_model_group(model: str | None, conf_dir: Path = CONF_DIR) -> None:
    if model is not None and not (Path(conf_dir) / "model" / f"{model}.yaml").is_file():
        known = sorted(p.stem for p in (Path(conf_dir) / "model").glob("*.yaml"))
        raise ModelmakeError(f"--model {model}: no conf/model/{model}.yaml (known: {', '.join(known)})")


def plan_warnings(mapped: Mapped) -> list[str]:
    """Whether modelmake can plan the result here (it may not, and still be right elsewhere: a CUDA
    export on a CPU machine, an Azure ML model not yet downloaded)."""
    from modelmake.recipe import build_plan

    try:
        build_plan(overrides=mapped.overrides())
    except ModelmakeError as e:
        return [f"modelmake cannot plan this on this machine yet: {e}"]
    return []

