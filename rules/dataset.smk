# Validated, templated, split dataset (train.jsonl / eval.jsonl) from a prompt/response JSONL.
rule dataset:
    input:
        unpack(upstream("dataset")),
        data=lambda w: ancient(node("dataset", w).config["data"]["path"]),
    output:
        manifest=update(f"{ART}/dataset/{{key}}/manifest.json"),
    log:
        "logs/dataset/{key}.log",
    params:
        cmd=command("dataset"),
        expect=expect("dataset"),
    threads: stage_threads("dataset")
    resources:
        **stage_resources("dataset"),
    shell:
        stage_cmd("dataset")
