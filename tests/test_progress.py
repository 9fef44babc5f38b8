"""The build's view of itself: a stage's own progress read from its log, and the time a stage takes
learned from this machine's earlier builds (the journal, with the config from their manifests)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from modelmake.core import journal
from modelmake.graph.progress import Estimator, human, last_progress


def test_the_last_progress_bar_of_a_log_is_read_with_its_postfix(tmp_path):
    log = tmp_path / "finetune.log"
    log.write_text("loading\nfinetune:  10%|#         | 10/100 [00:01<00:09,  9.9it/s, loss=1.234]\r"
                   "finetune:  34%|###4      | 34/100 [00:05<00:09,  6.60it/s, loss=0.762]")
    p = last_progress(log)
    assert (p.desc, p.n, p.total, p.left_s, p.postfix) == ("finetune", 34, 100, 9.0, "loss=0.762")
    assert str(p) == "finetune 34/100 loss=0.762" and abs(p.fraction - 0.34) < 1e-9
    assert last_progress(tmp_path / "absent.log") is None


def test_human_times():
    assert [human(x) for x in (None, 4.4, 75, 3700)] == ["?", "4 s", "1 min 15 s", "1 h 01 min"]


def built(root: Path, stage: str, key: str, config: dict, seconds: float, model: str = "tiny-phi3") -> None:
    folder = root / "artifacts" / stage / key
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"stage": stage, "key": key, "config": config}))
    journal.append({"action": "build", "stage": stage, "key": key, "seconds": seconds, "model": model,
                    "host": socket.gethostname()}, root)


def test_a_stage_is_estimated_from_earlier_builds_of_it_on_this_machine(tmp_path):
    train = {"lora": {"r": 8}, "train": {"steps": 100, "batch_size": 8}}
    built(tmp_path, "finetune", "a" * 12, train, 20.0)
    built(tmp_path, "finetune", "b" * 12, train, 22.0)
    est = Estimator(tmp_path)
    same = SimpleNamespace(stage="finetune", config=train)
    assert est.seconds(same, "tiny-phi3") == 21.0  # the median of the same config's builds
    longer = SimpleNamespace(stage="finetune", config={"lora": {"r": 4}, "train": {"steps": 200, "batch_size": 8}})
    assert est.seconds(longer, "tiny-phi3") == 42.0  # scaled by its work: twice the steps
    assert est.seconds(same, "smollm2") is None  # another model: no guess
    assert est.seconds(SimpleNamespace(stage="quantize", config={}), "tiny-phi3") is None


def test_a_job_the_scheduler_refused_is_reported_with_its_reason_and_the_call():
    """A job sbatch refused has an empty stage log: the build's view names the scheduler's words
    (the SLURM executor's message, over two lines here) and the options asked, not the command."""
    from modelmake.graph.snakemake import submit_failure

    lines = ["Error in rule finetune:\n",
             "    message: SLURM sbatch failed. The error message was "
             "'sbatch: error: invalid partition specified: p0\n",
             "sbatch: error: Batch job submission failed: Invalid partition name specified'.\n",
             "    sbatch call:\n", "        sbatch --job-name x -p p0 --gpus=1 --wrap=\"python -m snakemake\"\n", "\n"]
    said, call = submit_failure(lines).splitlines()
    assert said.startswith("SLURM sbatch failed.") and "invalid partition specified: p0" in said
    assert call == "  sbatch call: sbatch --job-name x -p p0 --gpus=1"
    assert submit_failure(["Error in rule finetune:\n", "  log: logs/finetune/k.log\n"]) is None


def test_a_build_until_a_stage_counts_only_what_that_stage_needs():
    """`modelmake build --until finetune` announces the artifacts it will build: finetune and what
    it reads (base, dataset, quantize), for every point of a sweep, never generate or the report."""
    from modelmake.recipe import build_plan

    plan = build_plan(overrides=["lora.r=4,8"])
    needed = plan.needed("finetune")
    assert sorted({n.stage for n in needed}) == ["base", "dataset", "finetune", "quantize"]
    assert len([n for n in needed if n.stage == "finetune"]) == 2 and len(needed) == 5  # one quantize for both
    whole = {(n.stage, n.key) for stage in ("register", "report") for n in plan.needed(stage)}
    assert whole == set(plan.nodes) and "register" not in {n.stage for n in plan.needed("report")}


@pytest.mark.parametrize("rows,total", [(["base 1", "quantize 1", "all 1"], 2), (["base 1", "quantize 1"], 2)])
def test_the_count_of_stages_is_snakemakes_less_its_all_job(tmp_path, rows, total):
    """Snakemake's job table counts `rule all` only when no target is named (--until names one)."""
    import io

    from modelmake.graph.snakemake import QuietView

    out = io.StringIO()
    view = QuietView(tmp_path, [("base", "a" * 12, None)], out=out)
    for line in ["Job stats:", "job count", "----- -----", *rows, f"total {len(rows)}", "", "rule base:",
                 "    jobid: 3", f"    wildcards: key={'a' * 12}"]:
        view.line(line + "\n")
    assert view.total == total and f"[ 1/{total}] base" in out.getvalue()
