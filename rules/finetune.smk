# LoRA adapter (peft) trained on the int4 AWQ base.
rule finetune:
    input:
        unpack(upstream("finetune")),
    output:
        manifest=update(f"{ART}/finetune/{{key}}/manifest.json"),
    log:
        "logs/finetune/{key}.log",
    params:
        cmd=command("finetune"),
        expect=expect("finetune"),
    threads: stage_threads("finetune")
    resources:
        **stage_resources("finetune"),
    shell:
        stage_cmd("finetune")
