# The base model: the embedded tiny Phi-3 (tokenizer + brief pre-training) or a pretrained reference.
rule base:
    input:
        unpack(upstream("base")),
        corpus=lambda w: [ancient(p) for p in node("base", w).data if Path(p).is_file()],
    output:
        manifest=update(f"{ART}/base/{{key}}/manifest.json"),
    log:
        "logs/base/{key}.log",
    params:
        cmd=command("base"),
        expect=expect("base"),
    threads: stage_threads("base")
    resources:
        **stage_resources("base"),
    shell:
        stage_cmd("base")
