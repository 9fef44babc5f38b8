"""`modelmake`: the build graph with Hydra override syntax, and the recipe's try-it step.

  modelmake build [--profile slurm] [--until STAGE] [overrides...] [-- snakemake args]  e.g. lora.r=8,16
  modelmake plan  [overrides...]                        keys, paths and what is built
  modelmake generate --prompt "..." [--model DIR] [--adapter FILE] [overrides...]
  modelmake explain ARTIFACT [--verify]                 how it was made, back to the data
  modelmake dvc [--check]                               regenerate dvc.yaml from the plan
  modelmake search NAME [--trials N] [overrides...]     Optuna search (conf/search/NAME.yaml)
  modelmake stage NAME [overrides...]                   build one stage (its inputs must be built)
  modelmake olive import CONFIG.json [--name NAME]      an Olive workflow config -> conf/experiment/NAME.yaml
  modelmake olive translate [--run] -- olive CMD ARGS   olive commands -> the equivalent modelmake build line
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from modelmake.core.errors import ModelmakeError
from modelmake.core.paths import ROOT
from modelmake.graph.snakemake import run_snakemake, snakemake_command
from modelmake.recipe import RECIPE, build_plan, compose, stage_node


def cmd_build(args) -> int:
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
    return run_snakemake(snakemake_command(args.overrides, extra))


def cmd_plan(args) -> int:
    plan = build_plan(overrides=args.overrides)
    print(f"{len(plan.points)} point(s)")
    print(f"{'stage':<10} {'key':<13} {'built':<6} path")
    seen = set()
    for point in plan.finals:
        for stage, node in point.items():
            if (stage, node.key) in seen:
                continue
            seen.add((stage, node.key))
            built = "yes" if (ROOT / node.manifest).exists() else "no"
            print(f"{stage:<10} {node.key:<13} {built:<6} {node.path}")
    return 0


def cmd_generate(args) -> int:
    from modelmake.data.templates import prompt_text
    from modelmake.stages.generate import stream
    from modelmake.stages.layout import ADAPTER_FILE, TEMPLATE_FILE, load_template

    plan = build_plan(overrides=args.overrides)
    cfg, point = compose(plan.points[0]), plan.finals[0]
    model = Path(args.model) if args.model else ROOT / point["export"].path / "model"
    adapter = None
    if not args.no_adapter:
        adapter = Path(args.adapter) if args.adapter else ROOT / point["adapter"].path / ADAPTER_FILE
    text = args.prompt
    if not args.raw:  # the prompt as the adapter saw it in training: the dataset's own rendering
        dataset = ROOT / point["dataset"].path
        if not (dataset / TEMPLATE_FILE).exists():
            raise ModelmakeError(f"{dataset}: not built; build the chain first (modelmake build), or pass --raw")
        text = prompt_text(*load_template(dataset), args.prompt)
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
        run_node(node, cfg, stage_build(RECIPE.spec(args.name).module))

    guarded(run)
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
    b.add_argument("--until", metavar="STAGE", help="build this stage and what it needs, not the whole chain")
    b.add_argument("overrides", nargs="*")
    p = sub.add_parser("plan", help="print keys and paths of every artifact")
    p.add_argument("overrides", nargs="*")
    g = sub.add_parser("generate", help="stream a generation with an adapter active")
    g.add_argument("--prompt", required=True)
    g.add_argument("--model", help="onnxruntime-genai model folder (default: this config's export)")
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
                    "explain": cmd_explain, "search": cmd_search, "stage": cmd_stage, "olive": cmd_olive}
        return commands[args.command](args)
    except ModelmakeError as e:
        print(f"modelmake: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
