"""Optuna search over Hydra overrides; the objective is an evaluate-stage metric.

    modelmake search lora_lr                 # conf/search/lora_lr.yaml
    modelmake search lora_lr --trials 12 data=travel_shared -- --cores 2

Every trial is one point of the build graph: its overrides go to Snakemake, which builds that
point's evaluate artifact (and only what is missing: a trial that repeats a point, or shares its
quantize/export with earlier trials or sweeps, reuses them), and the objective is read back from
the artifact's metrics.json. The study is an Optuna SQLite file under searches/, named by the
search spec, the fixed overrides and the code and data of every stage: rerunning the command
resumes it (only the missing trials run); changing any of those starts a new study, so a study
never mixes numbers from two versions of the pipeline. A summary (trials table, the standard
metrics tables of every point, the objective's history) is written next to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from modelmake.core.atomic import write_json, write_text
from modelmake.core.errors import ModelmakeError
from modelmake.core.manifest import verify
from modelmake.core.paths import CONF_DIR, ROOT
from modelmake.graph.overrides import format_value
from modelmake.graph.plan import KEY_LEN, digest
from modelmake.recipe import RECIPE, build_plan

SEARCH_DIR = CONF_DIR / "search"
SAMPLERS = ("tpe", "random", "grid")


@dataclass
class SearchSpec:
    name: str
    metric: str
    direction: str                  # minimize | maximize
    n_trials: int
    sampler: str
    seed: int
    overrides: list[str]            # fixed for every trial
    params: dict[str, dict]         # override key -> {choices: [...]} | {low, high, step?, log?}


def load_spec(name: str, extra_overrides: list[str] = ()) -> SearchSpec:
    """conf/search/NAME.yaml, checked field by field (the message names the file and the field)."""
    path = SEARCH_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SEARCH_DIR.glob("*.yaml"))
        raise ModelmakeError(f"no search spec {path.relative_to(ROOT)} (known: {known})")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)

    def need(cond, field_name, msg):
        if not cond:
            raise ModelmakeError(f"{path.relative_to(ROOT)}: field '{field_name}': {msg}")

    unknown = set(raw) - {"metric", "direction", "n_trials", "sampler", "seed", "overrides", "params"}
    need(not unknown, sorted(unknown)[0] if unknown else "", "unknown field")
    need(isinstance(raw.get("metric"), str), "metric", "must name an evaluate metric, e.g. ppl_onnx_lora")
    need(raw.get("direction", "minimize") in ("minimize", "maximize"), "direction", "must be minimize or maximize")
    need(isinstance(raw.get("n_trials", 8), int) and raw.get("n_trials", 8) > 0, "n_trials",
         "must be a positive integer")
    need(raw.get("sampler", "tpe") in SAMPLERS, "sampler", f"must be one of {SAMPLERS}")
    params = raw.get("params") or {}
    need(isinstance(params, dict) and params, "params", "must map override keys to a range or choices")
    for key, p in params.items():
        f = f"params.{key}"
        need(isinstance(p, dict), f, "must be {choices: [...]} or {low: .., high: .., step: ..}")
        if "choices" in p:
            need(set(p) == {"choices"} and isinstance(p["choices"], list) and p["choices"], f,
                 "choices must be a non-empty list, alone")
        else:
            need({"low", "high"} <= set(p) <= {"low", "high", "step", "log"}, f,
                 "needs low and high (step, log optional)")
            need(all(isinstance(p[k], (int, float)) and not isinstance(p[k], bool) for k in ("low", "high")), f,
                 f"low and high must be numbers, got {p['low']!r} and {p['high']!r}")
            need(p["low"] < p["high"], f, f"low {p['low']} must be below high {p['high']}")
            need(not (p.get("log") and p.get("step")), f, "log and step do not go together")
    sampler = raw.get("sampler", "tpe")
    need(sampler != "grid" or all("choices" in p for p in params.values()), "sampler",
         "grid needs choices for every param")
    return SearchSpec(name, raw["metric"], raw.get("direction", "minimize"), raw.get("n_trials", 8), sampler,
                      raw.get("seed", 0), [str(o) for o in raw.get("overrides", [])] + list(extra_overrides), params)


def suggest(trial, key: str, p: dict):
    if "choices" in p:
        return trial.suggest_categorical(key, p["choices"])
    if all(isinstance(p[k], int) for k in ("low", "high")) and isinstance(p.get("step", 1), int) and not p.get("log"):
        return trial.suggest_int(key, p["low"], p["high"], step=p.get("step", 1))
    return trial.suggest_float(key, float(p["low"]), float(p["high"]), step=p.get("step"), log=bool(p.get("log")))


def point_overrides(spec: SearchSpec, params: dict) -> list[str]:
    return spec.overrides + [f"{k}={format_value(v)}" for k, v in params.items()]


def study_id(spec: SearchSpec) -> str:
    """The spec plus the code and data every stage is built from: a change there is a new study."""
    point = build_plan(overrides=spec.overrides).finals[0]
    pipeline = {s: {"code": n.code["sha256"], "data": sorted(n.data.values())} for s, n in point.items()}
    kept = {k: v for k, v in spec.__dict__.items() if k != "n_trials"}  # more trials extend the same study
    return f"{spec.name}-{digest({'spec': kept, 'pipeline': pipeline})[:KEY_LEN]}"


def make_sampler(spec: SearchSpec):
    import optuna

    if spec.sampler == "grid":
        return optuna.samplers.GridSampler({k: p["choices"] for k, p in spec.params.items()}, seed=spec.seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    return optuna.samplers.TPESampler(seed=spec.seed)


def upstream_of(node) -> list:
    """The node and everything it is built from."""
    out = [node]
    for n in node.inputs.values():
        out += upstream_of(n)
    return out


def build_point(overrides: list[str], snakemake_args: list[str]) -> tuple[dict, list[str]]:
    """Build one point's evaluate artifact through Snakemake; (its metrics, the stages it had to build)."""
    from modelmake.graph.snakemake import run_snakemake, snakemake_command

    ev = build_plan(overrides=overrides).finals[0]["evaluate"]  # refuses a bad config before Snakemake starts
    missing = sorted({n.stage for n in upstream_of(ev) if not (ROOT / n.manifest).exists()},
                     key=[s.name for s in RECIPE.stages].index)
    if "evaluate" in missing:
        rc = run_snakemake(snakemake_command(overrides, [*snakemake_args, str(ev.manifest)]), cwd=ROOT)
        if rc != 0:
            raise ModelmakeError(f"building {' '.join(overrides) or 'defaults'} failed (snakemake exit {rc})")
    metrics = verify(ROOT / ev.path, "evaluate", ev.key)["metrics"]  # the artifact checked, then read
    return metrics | {"_evaluate_key": ev.key}, missing


def run(name: str, n_trials: int | None = None, overrides: list[str] = (), snakemake_args: list[str] = ()) -> Path:
    """Run (or resume) the study until it has n_trials finished trials; write its summary. Returns its folder."""
    import optuna

    spec = load_spec(name, list(overrides))
    if n_trials is not None:
        spec.n_trials = n_trials
    for key, p in spec.params.items():  # refuse a bad space before anything is built
        build_plan(overrides=point_overrides(spec, {key: (p["choices"][0] if "choices" in p else p["low"])}))
    sid = study_id(spec)
    folder = ROOT / "searches" / sid
    folder.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=sid, storage=f"sqlite:///{folder / 'study.db'}", load_if_exists=True,
                                direction=spec.direction, sampler=make_sampler(spec))

    def objective(trial):
        params = {k: suggest(trial, k, p) for k, p in spec.params.items()}
        ov = point_overrides(spec, params)
        t0 = time.perf_counter()
        metrics, built = build_point(ov, list(snakemake_args))
        if not isinstance(metrics.get(spec.metric), (int, float)):
            raise ModelmakeError(f"search {name}: metric '{spec.metric}' not in the evaluate metrics "
                                 f"(have: {sorted(k for k in metrics if not k.startswith('_'))})")
        trial.set_user_attr("overrides", ov)
        trial.set_user_attr("evaluate_key", metrics["_evaluate_key"])
        trial.set_user_attr("built", built)
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
        return float(metrics[spec.metric])

    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    todo = max(0, spec.n_trials - done)
    if spec.sampler == "grid":
        todo = min(todo, max(0, grid_size(spec) - done))
    if todo:
        study.optimize(objective, n_trials=todo, catch=())
    write_summary(spec, study, folder)
    return folder


def grid_size(spec: SearchSpec) -> int:
    n = 1
    for p in spec.params.values():
        n *= len(p["choices"])
    return n


def write_summary(spec: SearchSpec, study, folder: Path) -> None:
    """trials.json, summary.md and history.png: what was tried, what it scored, what it had to build."""
    import optuna

    from modelmake.stages.report import markdown_tables, plot_search_history, tables

    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not trials:
        raise ModelmakeError(f"search {spec.name}: no finished trial")
    best = study.best_trial
    rows = [{"trial": t.number, "params": t.params, "value": t.value, "overrides": t.user_attrs["overrides"],
             "evaluate_key": t.user_attrs["evaluate_key"], "built": t.user_attrs["built"],
             "seconds": t.user_attrs["seconds"]} for t in trials]
    write_json(folder / "trials.json", {"study": study.study_name, "metric": spec.metric, "direction": spec.direction,
                                        "best": rows[trials.index(best)], "trials": rows})
    plot_search_history([t.value for t in trials], spec.metric, spec.direction, folder / "history.png")

    label = lambda params: " ".join(f"{k}={format_value(v)}" for k, v in params.items())  # noqa: E731
    points, seen = [], set()
    for t in trials:
        if t.user_attrs["evaluate_key"] in seen:
            continue
        seen.add(t.user_attrs["evaluate_key"])
        ev = build_plan(overrides=t.user_attrs["overrides"]).finals[0]["evaluate"]
        if ev.key == t.user_attrs["evaluate_key"] and (ROOT / ev.manifest).exists():
            metrics = verify(ROOT / ev.path, "evaluate", ev.key)["metrics"]
            points.append({"label": label(t.params), "metrics": metrics, "measured": {}})
    lines = [f"# Search `{spec.name}`: {spec.direction} `{spec.metric}`", "",
             f"Study `{study.study_name}` ({spec.sampler} sampler, seed {spec.seed}): {len(trials)} trial(s), "
             f"{len(seen)} distinct point(s). Best: trial {best.number}, **{label(best.params)}** = {best.value:.6g}.",
             f"Rebuild it: `modelmake build {' '.join(best.user_attrs['overrides'])}`", "",
             "## Trials", "", f"| trial | params | {spec.metric} | stages built | seconds |", "|---|---|---|---|---|"]
    lines += [f"| {r['trial']} | {label(r['params'])} | {r['value']:.6g} | {', '.join(r['built']) or 'none (reused)'} "
              f"| {r['seconds']} |" for r in rows]
    lines += ["", "![objective per trial](history.png)", ""]
    lines += markdown_tables(tables(points)) if points else []
    write_text(folder / "summary.md", "\n".join(lines))
