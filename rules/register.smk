# The registered model asset (receipt.json: registry, name, version, URI), local MLflow or Azure ML.
rule register:
    input:
        unpack(upstream("register")),
    output:
        manifest=update(f"{ART}/register/{{key}}/manifest.json"),
    log:
        "logs/register/{key}.log",
    params:
        cmd=command("register"),
        expect=expect("register"),
    threads: stage_threads("register")
    resources:
        **stage_resources("register"),
    shell:
        stage_cmd("register")
