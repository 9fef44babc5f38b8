"""`modelmake`: the build graph with Hydra override syntax, and the recipe's try-it step.

  modelmake build [--profile slurm] [--until STAGE] [overrides...] [-- snakemake args]  e.g. lora.r=8,16
  modelmake plan  [overrides...]                        keys, paths and what is built
  modelmake generate --prompt "..." [--model DIR] [--adapter FILE] [overrides...]
  modelmake explain ARTIFACT [--verify]                 how it was made, back to the data
  modelmake dvc [--check]                               regenerate dvc.yaml from the plan
  modelmake search NAME [--trials N] [overrides...]     Optuna search (conf/search/NAME.yaml)
  modelmake stage NAME [overrides...]                   build one stage (its inputs must be built)
  modelmake status                                      what the running builds are doing, with the time left
  modelmake cache status|push|pull [--until S] [overrides...]   the shared cache (docs/cache.md)
  modelmake cache gc --older-than 30d                   remove old entries no release names
  modelmake olive import CONFIG.json [--name NAME]      an Olive workflow config -> conf/experiment/NAME.yaml
  modelmake olive translate [--run] -- olive CMD ARGS   olive commands -> the equivalent modelmake build line
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from modelmake.core.errors import ModelmakeError
from modelmake.core.paths import ROOT
from modelmake.graph.snakemake import run_snakemake, snakemake_command
from modelmake.recipe import RECIPE, build_plan, compose, stage_node

# Snakemake arguments after which its own output is the point (a dry run, a listing) or the plan's
# count of what is to build no longer holds (forced reruns): the build's view steps aside
VERBATIM = {"-n", "--dry-run", "--dryrun", "--summary", "--detailed-summary", "-S", "-D", "--list-rules", "--dag",
            "--rulegraph", "--lint", "-F", "--forceall", "-R", "--forcerun", "-f", "--force", "--touch", "-t"}


def in_cache(plan) -> set[tuple[str, str]]:
    """The plan's artifacts the shared cache holds (one listing; none where no cache is set or it
    cannot answer: the build then says why)."""
    from modelmake.graph import cache as cache_mod

    setting = cache_mod.setting(compose(plan.points[0]))
    if setting is None or not setting.pull:
        return set()
    try:
        listed = cache_mod.store(setting.url).entries()
    except cache_mod.CacheError:
        return set()
    return {(n.stage, n.key) for n in plan.nodes.values() if f"{n.stage}/{n.digest}" in listed}


def pending(plan, cached: set = frozenset(), until: str | None = None) -> list[tuple[str, str, float | None]]:
    """(stage, key, estimated seconds) of every artifact of the plan (up to `until` and what it
    needs) that is neither built nor in the shared cache, in plan order."""
    from modelmake.graph.progress import Estimator

    est, out = Estimator(ROOT), []
    for node in plan.needed(until) if until else plan.nodes.values():
        if not (ROOT / node.manifest).exists() and (node.stage, node.key) not in cached:
            cfg = compose(node.overrides) if node.stage in plan.finals[0] else None
            out.append((node.stage, node.key, est.seconds(node, str(cfg.model.name) if cfg else None)))
    return out


def cmd_build(args) -> int:
    from modelmake.graph.snakemake import QuietView

    plan = build_plan(overrides=args.overrides)  # refuse a bad config before Snakemake starts
    extra = list(args.snakemake)
    if getattr(args, "until", None):  # that stage and what it needs (targets go before --config)
        if args.until not in [s.name for s in RECIPE.stages]:
            raise ModelmakeError(f"--until {args.until}: no such stage ({', '.join(s.name for s in RECIPE.stages)})")
        extra = plan.targets(args.until) + extra
    if args.profile:
        # a workflow profile replaces profiles/default (which is why profiles/slurm repeats its settings)
        profile = ROOT / "profiles" / args.profile
        if not (profile / "config.yaml").is_file():
            known = sorted(p.name for p in (ROOT / "profiles").iterdir() if (p / "config.yaml").is_file())
            raise ModelmakeError(f"--profile {args.profile}: no {profile.relative_to(ROOT)}/config.yaml "
                                 f"(known: {known})")
        extra = ["--workflow-profile", str(profile)] + extra
    view = None
    if not getattr(args, "verbose", False) and not VERBATIM & set(extra):
        cached = in_cache(plan)
        view = QuietView(ROOT, pending(plan, cached, getattr(args, "until", None)), cached=len(cached))
    return run_snakemake(snakemake_command(args.overrides, extra), view=view)


def cmd_plan(args) -> int:
    from modelmake.graph.progress import human
    from modelmake.stages.report import point_labels

    plan = build_plan(overrides=args.overrides)
    todo = {(stage, key): est for stage, key, est in pending(plan)}
    labels = point_labels(list(plan.points))
    what = " ".join(args.overrides) or f"the defaults: model={compose(()).model.name}"
    print(f"{len(plan.points)} point(s) of {what}")
    print(f"{'stage':<10} {'key':<13} {'built':<6} {'point':<22} path")
    seen, rows = set(), [(label, list(point.items())) for label, point in zip(labels, plan.finals)]
    everywhere = {(s, n.key) for s, n in rows[0][1]} if rows else set()
    for _, items in rows[1:]:
        everywhere &= {(s, n.key) for s, n in items}
    for label, items in [*rows, ("every point", list(plan.over_points.items()))]:
        for stage, node in items:
            if (stage, node.key) in seen:
                continue
            seen.add((stage, node.key))
            built = "no" if (stage, node.key) in todo else "yes"
            where = "" if len(plan.points) == 1 else "every point" if (stage, node.key) in everywhere else label
            print(f"{stage:<10} {node.key:<13} {built:<6} {where:<22} {node.path}")
    known = [e for e in todo.values() if e is not None]
    left = f" (about {human(sum(known))} on this machine)" if known else ""
    print(f"{len(seen) - len(todo)} built, {len(todo)} to build{left}")
    return 0


def cmd_status(args) -> int:
    """What the builds running in this project are doing now (from any terminal)."""
    from modelmake.graph.progress import human, running

    now = running(ROOT)
    if not now:
        print("no stage is being built in this project")
        return 0
    for r in now:
        p = r["progress"]
        left = f", {human(p.left_s)} left" if p and p.left_s is not None else ""
        print(f"{r['stage']:<9} {r['key']}  running for {human(r['elapsed_s'])}" + (f": {p}{left}" if p else "")
              + f"  (log: logs/{r['stage']}/{r['key']}.log)")
    return 0


def cmd_generate(args) -> int:
    from modelmake.core.manifest import verify
    from modelmake.data.templates import prompt_text
    from modelmake.stages.generate import stream
    from modelmake.stages.layout import ADAPTER_FILE, MODEL_DIR, load_template
    from modelmake.stages.merged_layout import deployed

    plan = build_plan(overrides=args.overrides)
    cfg, point = compose(plan.points[0]), plan.finals[0]

    def checked(stage):
        """This config's artifact, checked against its manifest and its place before it is read."""
        node = point[stage]
        if not (ROOT / node.manifest).exists():
            raise ModelmakeError(f"{node.path}: not built; build the chain first (modelmake build "
                                 f"{' '.join(args.overrides)}), or pass --model/--adapter/--raw")
        verify(ROOT / node.path, stage, node.key)
        return ROOT / node.path

    if args.model or args.adapter or args.no_adapter:  # the user's own graph or adapter, over the export's
        model = Path(args.model) if args.model else checked("export") / MODEL_DIR
        model_only = not (args.adapter or args.no_adapter)  # a merged point's own adapter is inside its graph
        if args.no_adapter or (model_only and "merged" in point):
            adapter = None
        else:
            adapter = Path(args.adapter or checked("adapter") / ADAPTER_FILE)
    else:  # what the point deploys, as its generate stage runs it (export=int4_merged: the merged graph alone)
        for stage in ("merged",) if "merged" in point else ("export", "adapter"):
            checked(stage)
        model, adapter = deployed(point, cfg.export.merge)
        model, adapter = ROOT / model, adapter and ROOT / adapter
    text = args.prompt
    if not args.raw:  # the prompt as the adapter saw it in training: the dataset's own rendering
        text = prompt_text(*load_template(checked("dataset")), args.prompt)
    result = stream(model, text, adapter, args.max_new_tokens or cfg.generate.max_new_tokens)
    print(f"[{result['new_tokens']} tokens, {result['tokens_per_s']:.0f} tokens/s, "
          f"first token {1000 * result['time_to_first_token_s']:.1f} ms]", file=sys.stderr)
    return 0


def cmd_dvc(args) -> int:
    from modelmake.graph import dvc as dvcgen

    if args.check:
        if dvcgen.is_current(RECIPE):
            print("dvc.yaml is current")
            return 0
        print("dvc.yaml is stale: run `modelmake dvc`", file=sys.stderr)
        return 1
    changed = dvcgen.write(RECIPE)
    print("dvc.yaml " + ("written" if changed else "unchanged"))
    return 0


def cmd_explain(args) -> int:
    from modelmake.core.manifest import explain, verify_lineage

    path = Path(args.artifact)
    if path.name == "manifest.json":
        path = path.parent
    if args.verify:
        n = verify_lineage(path, ROOT)
        print(f"verified: {n} artifact(s) of the lineage match their manifests", file=sys.stderr)
    print(explain(path, ROOT))
    return 0


def cmd_search(args) -> int:
    from modelmake.search import run

    folder = run(args.name, args.trials, args.overrides, args.snakemake)
    print(f"search summary: {folder.relative_to(ROOT)}/summary.md")
    return 0


def cmd_stage(args) -> int:
    from modelmake.graph.runner import guarded, run_node, stage_build

    def run():
        node, cfg = stage_node(args.name, args.overrides)
        def stages(name):
            spec = RECIPE.spec(name)
            return stage_build(spec.module), spec.shared

        run_node(node, cfg, *stages(args.name), stages=stages)

    guarded(run, args.name)
    return 0


def cmd_cache(args) -> int:
    """The shared cache: what a configuration has there, and moving artifacts by hand."""
    from modelmake.graph import cache as cache_mod
    from modelmake.graph.runner import publish_node, pull_node

    plan = build_plan(overrides=args.overrides)
    setting = cache_mod.setting(compose(plan.points[0]))
    if setting is None:
        raise ModelmakeError("no cache is set: cache=folder cache.url=/mnt/team/cache, cache=azure "
                             "cache.url=az://container/prefix, or $MODELMAKE_CACHE")
    st = cache_mod.store(setting.url)
    try:
        listed = st.entries()
    except cache_mod.CacheError as e:
        raise ModelmakeError(f"cache {setting.url}: {e}") from None
    shared = [n for n in plan.nodes.values() if RECIPE.spec(n.stage).shared]
    if args.until:
        order = [s.name for s in RECIPE.stages]
        shared = [n for n in shared if order.index(n.stage) <= order.index(args.until)]
    if args.action == "status":
        print(f"cache {setting.url}")
        print(f"{'stage':<10} {'key':<13} {'here':<5} {'cache':<6} size")
        for n in shared:
            here = (ROOT / n.manifest).exists()
            size = sum(f.stat().st_size for f in (ROOT / n.path).rglob("*") if f.is_file()) if here else None
            cached = "yes" if f"{n.stage}/{n.digest}" in listed else "no"
            shown = "" if size is None else f"{size / 1e6:.1f} MB"
            print(f"{n.stage:<10} {n.key:<13} {'yes' if here else 'no':<5} {cached:<6} {shown}")
        return 0
    if args.action == "push":
        done = [n for n in shared if (ROOT / n.manifest).exists() and f"{n.stage}/{n.digest}" not in listed]
        for i, n in enumerate(done):
            try:
                publish_node(n, setting, strict=True)
            except cache_mod.CacheError as e:  # the cache went away: the rest would wait on it too
                raise ModelmakeError(f"cache {setting.url}: pushing {n.stage} {n.key}: {e} ({i} of {len(done)} "
                                     "pushed; the same command pushes the rest)") from None
        print(f"pushed {len(done)} artifact(s) to {setting.url}")
        return 0
    # pull: what the cache holds of this plan, verified
    got = [n for n in shared if not (ROOT / n.manifest).exists() and f"{n.stage}/{n.digest}" in listed]
    ok = [n for n in got if pull_node(n, setting)]
    print(f"pulled {len(ok)} of {len(got)} artifact(s) from {setting.url}")
    return 0 if len(ok) == len(got) else 1


def cmd_gc(args) -> int:
    """Remove cache entries older than --older-than that no release names, then the contents no entry names."""
    from modelmake.graph import cache as cache_mod
    from modelmake.graph import dvc as dvcgen

    setting = cache_mod.setting(compose(tuple(args.overrides)))
    if setting is None:
        raise ModelmakeError("no cache is set (cache=..., or $MODELMAKE_CACHE)")
    m = re.fullmatch(r"(\d+)([dh])", args.older_than)
    if not m:
        raise ModelmakeError(f"--older-than {args.older_than}: give days or hours, e.g. 30d or 12h")
    horizon = time.time() - int(m.group(1)) * (86400 if m.group(2) == "d" else 3600)
    keep = {f"{n.stage}/{n.digest}" for overrides in dvcgen.releases().values()
            for n in build_plan(overrides=overrides).nodes.values()}
    st = cache_mod.store(setting.url)
    try:
        names = list(st.listing())
        entries = {name: t for name, t in names if name.startswith("entries/") and name.endswith(".json")}
        gone = [name for name, t in entries.items() if t < horizon and name[len("entries/"):-5] not in keep]
        for name in gone:
            st.delete(name)
        referenced = set()
        for name in set(entries) - set(gone):
            stage, digest = name[len("entries/"):-5].split("/", 1)
            raw = st.get_entry(stage, digest)
            if raw:
                e = json.loads(raw)
                referenced |= {f["sha256"] for f in e["files"].values()} | {e["manifest"]["sha256"]}
        blobs = [(name, t) for name, t in names if name.startswith("blobs/")]
        # a blob newer than the horizon may belong to a publisher whose entry is not written yet
        orphans = [name for name, t in blobs if name.rsplit("/", 1)[1] not in referenced and t < horizon]
        for name in orphans:
            st.delete(name)
    except cache_mod.CacheError as e:
        raise ModelmakeError(f"cache {setting.url}: {e}") from None
    print(f"removed {len(gone)} entr{'y' if len(gone) == 1 else 'ies'} and {len(orphans)} blob(s) from {setting.url}"
          f" (kept {len(entries) - len(gone)} entries, the releases' among them)")
    return 0


def olive_options(args, base: Path):
    from modelmake.olive import Options

    return Options(base=base, model=args.model, revision=args.revision, trust_remote_code=args.trust_remote_code,
                   response_marker=args.response_marker, cpu=args.cpu, strict=args.strict)


def cmd_olive(args) -> int:
    import shlex

    from modelmake import olive

    if args.olive_command == "import":
        config = Path(args.config) if Path(args.config).is_absolute() else args.cwd / args.config
        command = "modelmake " + shlex.join(args.argv)
        path, mapped = olive.import_config(config, args.name, olive_options(args, Path(".")), command,
                                           force=args.force)
        print(olive.table(mapped))
        for w in mapped.warnings:
            print(f"modelmake: warning: {w}", file=sys.stderr)
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
              f"modelmake build experiment={path.stem}")
        return 0
    if args.script:
        script = Path(args.script) if Path(args.script).is_absolute() else args.cwd / args.script
        commands, skipped = olive.script_commands(script)
        if args.snakemake:
            raise ModelmakeError("olive translate: give --script FILE or the commands after --, not both")
        for line in skipped:
            print(f"skipped (not an olive command): {line}", file=sys.stderr)
    else:
        commands = olive.split_commands(args.snakemake)
        if not commands:
            raise ModelmakeError("olive translate: no olive command (modelmake olive translate -- olive finetune ...)")
    mapped = olive.translate_commands(commands, olive_options(args, args.cwd))
    print(olive.table(mapped))
    for w in mapped.warnings:
        print(f"modelmake: warning: {w}", file=sys.stderr)
    line = olive.build_line(mapped)
    print(shlex.join(line))
    if not args.run:
        return 0
    build = argparse.Namespace(overrides=mapped.overrides(), profile=None, until=mapped.until, snakemake=[])
    return cmd_build(build)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    parser = argparse.ArgumentParser(prog="modelmake", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the default target (a sweep with comma lists)")
    b.add_argument("--profile", help="a profile in profiles/ (e.g. slurm): where and how jobs run")
    b.add_argument("--verbose", action="store_true", help="show Snakemake's whole output instead of the build's view")
    b.add_argument("--until", metavar="STAGE", help="build this stage and what it needs, not the whole chain")
    b.add_argument("overrides", nargs="*")
    p = sub.add_parser("plan", help="print keys and paths of every artifact")
    p.add_argument("overrides", nargs="*")
    g = sub.add_parser("generate", help="stream a generation with an adapter active")
    g.add_argument("--prompt", required=True)
    g.add_argument("--model", help="onnxruntime-genai model folder (default: this config's export; "
                   "its merged graph with export=int4_merged)")
    g.add_argument("--adapter", help=".onnx_adapter file (default: this config's adapter)")
    g.add_argument("--no-adapter", action="store_true", help="run the base graph alone")
    g.add_argument("--raw", action="store_true", help="send the prompt as is, without the data template")
    g.add_argument("--max-new-tokens", type=int)
    g.add_argument("overrides", nargs="*")
    d = sub.add_parser("dvc", help="generate dvc.yaml from conf/releases.yaml and the plan")
    d.add_argument("--check", action="store_true", help="exit 1 if dvc.yaml is stale")
    e = sub.add_parser("explain", help="print how an artifact was made, back to the data")
    e.add_argument("artifact", help="an artifact folder (or its manifest.json)")
    e.add_argument("--verify", action="store_true",
                   help="first check every artifact of the lineage against its manifest")
    s = sub.add_parser("search", help="Optuna search over overrides; objective from the evaluate stage")
    s.add_argument("name", help="a search spec in conf/search/")
    s.add_argument("--trials", type=int, help="finished trials wanted (default: the spec's n_trials)")
    s.add_argument("overrides", nargs="*", help="fixed overrides for every trial")
    sub.add_parser("status", help="what the builds running in this project are doing now")
    c = sub.add_parser("cache", help="the shared cache: status, push or pull a configuration's artifacts, gc")
    csub = c.add_subparsers(dest="action", required=True)
    for name, text in (("status", "per artifact: here, in the cache, size"), ("push", "publish what is built here"),
                       ("pull", "fetch what the cache holds, verified")):
        cp = csub.add_parser(name, help=text)
        cp.add_argument("--until", choices=[s.name for s in RECIPE.stages], help="only stages up to this one")
        cp.add_argument("overrides", nargs="*")
    gc = csub.add_parser("gc", help="remove old entries no release names")
    gc.add_argument("--older-than", required=True, help="e.g. 30d or 12h")
    gc.add_argument("overrides", nargs="*")
    st = sub.add_parser("stage", help="build one stage of the chain (what each rule and dvc.yaml stage runs)")
    st.add_argument("name", choices=[spec.name for spec in RECIPE.stages])
    st.add_argument("overrides", nargs="*")
    o = sub.add_parser("olive", help="an Olive workflow config or olive commands as modelmake settings (docs/olive.md)")
    osub = o.add_subparsers(dest="olive_command", required=True)
    oi = osub.add_parser("import", help="an Olive workflow config (JSON or YAML) -> conf/experiment/NAME.yaml")
    oi.add_argument("config")
    oi.add_argument("--name", help="the experiment's name (default: the config's workflow_id, else its file name)")
    oi.add_argument("--force", action="store_true", help="replace conf/experiment/NAME.yaml if it exists")
    ot = osub.add_parser("translate", help="olive commands (after --, or --script FILE) -> a modelmake build line")
    ot.add_argument("--run", action="store_true", help="run the build line too")
    ot.add_argument("--script", help="a shell script of olive commands (the lab's flow.sh)")
    for q in (oi, ot):
        q.add_argument("--model", help="a conf/model group in place of the Olive input model (e.g. tiny_phi3)")
        q.add_argument("--revision", help="model.revision for a hub model (Olive reads the hub's current files)")
        q.add_argument("--trust-remote-code", action="store_true",
                       help="keep the config's trust_remote_code on: the model's own code from the hub will run")
        q.add_argument("--response-marker", help="where the loss starts in the text template (default: derived)")
        q.add_argument("--cpu", action="store_true", help="export for CPU whatever execution provider is named")
        q.add_argument("--strict", action="store_true", help="refuse a pass modelmake has no equivalent for")
    args = parser.parse_args(argv)
    args.snakemake = extra
    args.cwd = Path.cwd()  # olive's relative paths are the caller's
    args.argv = argv
    os.chdir(ROOT)
    try:
        commands = {"build": cmd_build, "plan": cmd_plan, "generate": cmd_generate, "dvc": cmd_dvc,
                    "explain": cmd_explain, "search": cmd_search, "stage": cmd_stage, "status": cmd_status,
                    "cache": lambda a: cmd_gc(a) if a.action == "gc" else cmd_cache(a),
                    "olive": cmd_olive}
        return commands[args.command](args)
    except ModelmakeError as e:
        print(f"modelmake: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
