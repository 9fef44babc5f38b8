# One rule per row of the recipe's stage table (modelmake/recipe/table.py): each stage is declared
# there once. Every artifact is artifacts/<stage>/<key>/, its manifest the file target.
# Every output is update(): Snakemake otherwise deletes an output that exists when its job starts,
# i.e. an artifact another concurrent build finished after this run planned it; the stage then
# waits on the artifact lock and finds it built (graph.runner.run_node).

wildcard_constraints:
    key="[0-9a-f]{12}",


for _spec in RECIPE.stages:
    _threads, _resources = stage_resources(_spec.name)

    rule:
        name:
            _spec.name
        input:
            unpack(upstream(_spec.name)),
            data=data_inputs(_spec.name),
        output:
            manifest=update(f"{ART}/{_spec.name}/{{key}}/manifest.json"),
            **{Path(f).stem: update(report(f"{ART}/{_spec.name}/{{key}}/{f}", category="modelmake"))
               for f in _spec.outputs},
        log:
            f"logs/{_spec.name}/{{key}}.log",
        params:
            cmd=command(_spec.name),
            expect=expect(_spec.name),
        threads: _threads
        resources:
            **_resources,
        shell:
            STAGE_SHELL
