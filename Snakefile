# modelmake: the Olive lab recipe as a build graph. Each artifact lives at artifacts/<stage>/<key>/,
# keyed by what built it: rules only ask "does it exist?" (profiles/default), the key answers
# "is it current?". Every --config entry is a Hydra override of conf/ (checked before anything runs):
#   snakemake --cores all                                               # the whole chain, tiny model
#   snakemake --cores all --config overrides='["lora.r=8,16"]'          # a sweep: one quantize, one export
#   snakemake --cores all --config lora='{r: 16}'                       # Snakemake's nested form
#   snakemake --cores all --config experiment=smollm2                   # SmolLM2-135M-Instruct

include: "rules/common.smk"
include: "rules/stages.smk"


rule all:
    default_target: True
    input:
        PLAN.targets(),
        *(PLAN.targets(name) for name in PLAN.over_points),
        # every artifact of the plan that is neither built nor in the shared cache, so a hole (an
        # upstream manifest deleted) is filled even when the final targets exist (their inputs are
        # ancient(): Snakemake would not look back), and nothing is pulled that no target reads
        sorted(str(n.manifest) for n in PLAN.nodes.values() if not present(n)),


onstart:
    # Stop means stop: SIGTERM/SIGINT end the running stages (not Snakemake's wait for them).
    # The scheduler, which installs Snakemake's own SIGTERM handler, exists from here on.
    from modelmake.core.lifecycle import stop_children_on_signal

    stop_children_on_signal()
    # the executor exists from here on (not while the Snakefile is read)
    if RES.get("slurm_status_max_s") and workflow.executor_plugin.name == "slurm":
        from modelmake.graph.cluster import cap_status_interval

        print(f"modelmake: {cap_status_interval(RES.slurm_status_max_s)}", file=sys.stderr)


onsuccess:
    show_generations(PLAN)
    if PLAN.report and (PLAN.report.path / "report.md").exists():  # not when explicit targets left it out
        print(f"report: {PLAN.report.path / 'report.md'}", file=sys.stderr)
