# A streamed generation through onnxruntime-genai with the adapter active.
rule generate:
    input:
        unpack(upstream("generate")),
    output:
        manifest=update(f"{ART}/generate/{{key}}/manifest.json"),
    log:
        "logs/generate/{key}.log",
    params:
        cmd=command("generate"),
        expect=expect("generate"),
    threads: stage_threads("generate")
    resources:
        **stage_resources("generate"),
    shell:
        stage_cmd("generate")
