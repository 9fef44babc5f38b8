# modelmake: the Olive lab recipe as a build graph.
#   snakemake --cores all                                   # whole chain on the tiny model
#   snakemake --cores all --config lora.r=8,16              # a sweep: one quantize, one export
#   snakemake --cores all --config model=phi35_mini export=int4_cuda   # a GPU node
# Every --config key=value is a Hydra override of conf/ (validated before anything runs).
# Each artifact lives at artifacts/<stage>/<key>/, keyed by what built it: rules only ask
# "does it exist?" (see profiles/default), the key answers "is it current?".

include: "rules/common.smk"
include: "rules/base.smk"
include: "rules/dataset.smk"
include: "rules/quantize.smk"
include: "rules/finetune.smk"
include: "rules/export.smk"
include: "rules/adapter.smk"
include: "rules/generate.smk"
include: "rules/evaluate.smk"
include: "rules/register.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        PLAN.targets("register"),
        PLAN.targets("report"),
        # every artifact of the plan, so a hole (an upstream manifest deleted) is filled even when
        # the final targets exist (their inputs are ancient(): Snakemake would not look back)
        sorted(str(n.manifest) for n in PLAN.nodes.values()),


onstart:
    # the executor exists from here on (not while the Snakefile is read)
    if RES.get("slurm_status_max_s") and workflow.executor_plugin.name == "slurm":
        from modelmake.cluster import cap_status_interval

        print(f"modelmake: {cap_status_interval(RES.slurm_status_max_s)}", file=sys.stderr)


onsuccess:
    show_generations(PLAN)
    if (PLAN.report.path / "report.md").exists():  # not when explicit targets left the report out
        print(f"report: {PLAN.report.path / 'report.md'}", file=sys.stderr)
