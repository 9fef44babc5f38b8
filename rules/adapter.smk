# The LoRA adapter as an .onnx_adapter, checked against the exported graph.
rule adapter:
    input:
        unpack(upstream("adapter")),
    output:
        manifest=update(f"{ART}/adapter/{{key}}/manifest.json"),
    log:
        "logs/adapter/{key}.log",
    params:
        cmd=command("adapter"),
        expect=expect("adapter"),
    threads: stage_threads("adapter")
    resources:
        **stage_resources("adapter"),
    shell:
        stage_cmd("adapter")
