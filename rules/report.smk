# The report over every point of this run or sweep: tables, plots, best point, generations.
rule report:
    input:
        unpack(report_upstream),
    output:
        manifest=update(f"{ART}/report/{{key}}/manifest.json"),
        html=update(report(f"{ART}/report/{{key}}/report.html", category="modelmake")),
    log:
        "logs/report/{key}.log",
    params:
        cmd=lambda w: stage_command(PLAN.report, PY),
        expect=lambda w: shlex.quote(str(PLAN.report.path)),
    threads: stage_threads("report")
    resources:
        **stage_resources("report"),
    shell:
        stage_cmd("report")
