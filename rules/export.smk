# int4 onnxruntime-genai graph of the AWQ checkpoint, LoRA weights as optional inputs.
rule export:
    input:
        unpack(upstream("export")),
    output:
        manifest=update(f"{ART}/export/{{key}}/manifest.json"),
    log:
        "logs/export/{key}.log",
    params:
        cmd=command("export"),
        expect=expect("export"),
    threads: stage_threads("export")
    resources:
        **stage_resources("export"),
    shell:
        stage_cmd("export")
