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
    threads: 2
    shell:
        stage_cmd("finetune")
