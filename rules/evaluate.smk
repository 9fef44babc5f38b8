# Held-out perplexities (fp32, RTN, AWQ, AWQ+LoRA, ONNX), parity, accuracy, speed and sizes.
rule evaluate:
    input:
        unpack(upstream("evaluate")),
    output:
        manifest=update(f"{ART}/evaluate/{{key}}/manifest.json"),
    log:
        "logs/evaluate/{key}.log",
    params:
        cmd=command("evaluate"),
        expect=expect("evaluate"),
    threads: stage_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    shell:
        stage_cmd("evaluate")
