# AWQ 4-bit (AutoAWQ GEMM) checkpoint of the base, calibrated on the training split.
rule quantize:
    input:
        unpack(upstream("quantize")),
    output:
        manifest=update(f"{ART}/quantize/{{key}}/manifest.json"),
    log:
        "logs/quantize/{key}.log",
    params:
        cmd=command("quantize"),
        expect=expect("quantize"),
    threads: stage_threads("quantize")
    resources:
        **stage_resources("quantize"),
    shell:
        stage_cmd("quantize")
