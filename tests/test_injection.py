"""Nothing a user types reaches a shell unquoted.

Hostile values ($(...), backticks, `;`, `|`, quotes, newlines) go through every override that
reaches a stage command (the artifacts folder, data and corpus paths, the text template, the
prompt, the registry's fields, the report title), in the `modelmake build` form and the plain
`snakemake --config` form. Snakemake then really runs every rule's shell command: each artifact
is pre-made as an empty manifest at the path the plan gives, so each stage script, once its
command line reached it intact, plans the same path (else MODELMAKE_EXPECT refuses), finds it
"up to date" and exits. No marker file may appear.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers.project import copy_project, run
from modelmake.graph.snakemake import config_args, snakemake_exe
from modelmake.recipe import RECIPE, build_plan

MARK = "PWNED-"  # a command that ran would create PWNED-<tag><n> in the project (the shell's cwd)


def hostile(tag: str) -> str:
    """A value that creates marker files if a shell ever interprets it (no `/`: it is a file name too)."""
    m = f"{MARK}{tag}"
    return f"x$(touch {m}1)`touch {m}2`;touch {m}3|touch {m}4 && touch {m}5 'q\" "


def overrides(project: Path) -> list[str]:
    data = project / "data" / f"d{hostile('data')}.jsonl"
    shutil.copy(project / "data" / "travel_sample.jsonl", data)
    with data.open("a") as f:  # other content, so the dataset's key (hence its command) takes the path
        f.write(json.dumps({"prompt": "Is Oslo expensive?", "response": "Yes; plan a budget."}) + "\n")
    corpus = project / "data" / f"c{hostile('corpus')}\nline.jsonl"  # a newline in a file name, kept exact
    shutil.copy(data, corpus)
    line = hostile("newline").replace(" 'q", "\n'q")
    return [
        f"artifacts=art/{hostile('art')}",
        f"data.path={data}",
        f"model.corpus={corpus}",
        f"data.template=<|user|>\\n{{prompt}} {hostile('tpl')}<|end|>\\n<|assistant|>\\n{{response}}<|end|>",
        f"generate.prompt=Tokyo? {line}",
        f"register.description={hostile('desc')}",
        f"register.name=n{hostile('name')}",
        f"report.title={hostile('title')}",
        "export=int4_merged",  # every stage in the graph, the merged export's too
    ]


def premade(project: Path, ov: list[str]) -> list[str]:
    """An empty manifest at every artifact's path; returns those manifests (the targets to force)."""
    plan = build_plan(overrides=ov)
    for node in plan.nodes.values():
        (project / node.path).mkdir(parents=True, exist_ok=True)
        (project / node.manifest).write_text("{}")
    (project / plan.report.path / "report.html").write_text("")
    return [str(n.manifest) for n in plan.nodes.values()]


@pytest.mark.parametrize("form", ["modelmake build", "snakemake --config"])
def test_no_override_reaches_a_shell_unquoted(tmp_path, form):
    project = copy_project(tmp_path / "p")
    ov = overrides(project)
    targets = premade(project, ov)
    jobs = len(targets)
    assert jobs == len(RECIPE.stages)  # every stage of the point and the report: every rule's command runs
    sm = ["--forceall", "--cores", "2", *targets]  # targets before --config (it takes every word after it)
    if form == "modelmake build":
        r = run(project, "modelmake", "build", *ov, "--", *sm)
    else:
        r = run(project, snakemake_exe(), *sm, *config_args(ov))
    out = r.stdout + r.stderr
    assert sorted(p.name for p in project.rglob(f"{MARK}*")) == []  # no shell interpreted a value
    assert r.returncode == 0, out[-4000:]
    assert f"{jobs} of {jobs} steps (100%) done" in out, out[-4000:]
    logs = "".join(p.read_text() for p in (project / "logs").rglob("*.log"))
    assert logs.count("up to date at") == jobs, logs[-3000:]  # each script got its values intact
