"""Fault benchmark: how builds survive crashes, concurrency and bad input.

    python bench/faults.py [--seed 10] [--stages base,quantize,finetune,export,adapter,register]

In a fresh copy of the project (one cold build of the default chain first), for each stage: a copy
without that stage's artifact, kill -9 of the stage process at a seeded random point inside the
stage, then kill -9 of Snakemake inside it, then one plain `modelmake build` (no flag). Then two
concurrent sweeps sharing quantize and export, and a set of bad data files given to the dataset
stage. Prints one table: faults injected, survived without a flag, bytes left behind, artifacts
built twice, bad inputs refused with file:line; the same goes to its section of bench/RESULTS.md
(`bench:faults`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import md_table, parser, stage_stats, timed, write_section
from helpers.faults import built_twice, kill_inside, leftovers, scratch_folders, size, start
from helpers.project import copy_project, nodes, run  # the tests' fresh-copy helpers (common put tests/ on sys.path)
from modelmake.graph.snakemake import snakemake_exe

GOOD = json.dumps({"prompt": "Where to?", "response": "Lisbon."})
BAD_INPUTS = {  # name -> (bytes, what the refusal must name)
    "not UTF-8": (GOOD.encode() + b'\n{"prompt": "caf\xe9", "response": "x"}\n', ":2: not UTF-8"),
    "role tokens": (f'{GOOD}\n{json.dumps({"prompt": "hi<|end|>", "response": "x"})}\n'.encode(), ":2: field 'prompt'"),
    "not JSON": (f"{GOOD}\n{{oops\n".encode(), ":2: not valid JSON"),
    "not an object": (f"{GOOD}\n[1, 2]\n".encode(), ":2: a record must be"),
    "missing field": (f'{GOOD}\n{json.dumps({"prompt": "q"})}\n'.encode(), ":2: field 'response' is missing"),
    "empty field": (f'{GOOD}\n{json.dumps({"prompt": "q", "response": " "})}\n'.encode(), ":2: field 'response'"),
}


def bad_settings(work: Path) -> list[tuple[str, list[str], str]]:
    """(what, overrides, what the refusal must name) of bad input beyond data records: each must be
    refused when the plan is built (`modelmake plan`: exit 2, no artifact written) in one line."""
    from helpers.folders import hf_folder

    empty, fifo = work / "empty.jsonl", work / "fifo.jsonl"
    empty.write_text("")
    os.mkfifo(fifo)
    decoy = hf_folder(work / "decoy")
    (decoy / "model.safetensors").write_bytes(b"")
    evil = hf_folder(work / "evil")
    (evil / "chat_template.jinja").write_text("{{ messages.__class__.__mro__ }}")
    huge = hf_folder(work / "huge", hidden_size=10_000_000, intermediate_size=10_000_000)
    model = ["model=phi35_mini", "model.revision=null"]
    return [
        ("an empty data file", [f"data.path={empty}"], "holds no records"),
        ("a directory as data", [f"data.path={work}"], "data.path': "),
        ("a FIFO as data", [f"data.path={fifo}"], "is not a regular file"),
        ("the Phi-3 template on SmolLM2", ["model=smollm2_135m",
                                           "data.template=<|user|>\\n{prompt}<|end|>\\n<|assistant|>\\n{response}<|end|>",
                                           "data.response_marker=<|assistant|>\\n"], "data.template"),
        ("an empty decoy .safetensors", [*model, f"model.source={decoy}"], "model.safetensors"),
        ("a chat template the sandbox refuses", [*model, f"model.source={evil}", "data.template=chat"],
         "data.template"),
        ("a config too large for the machine", [*model, f"model.source={huge}"], "model.source"),
        ("a typo'd key", ["lora.rank=8"], "did you mean 'lora.r'"),
        ("a new key (+)", ["+lora.rank=8"], "takes no new keys"),
        ("a cache URL of unknown scheme", ["cache=folder", "cache.url=s3://b/x"], "cache.url"),
        ("braces in the artifacts folder", ["artifacts=art/{x}"], "artifacts"),
    ]


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--seed", type=int, default=10)
    ap.add_argument("--stages", default="base,quantize,finetune,export,adapter,register")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="modelmake-bench-faults-"))
    rows = []
    try:
        built = copy_project(work / "built")
        timed(built, snakemake_exe(), "--cores", "2", what="cold build")
        scratch0 = scratch_folders()
        for stage in args.stages.split(","):
            p = copy_project(work / stage, built=built)
            seconds = stage_stats(built, nodes(built)[stage])["seconds"]
            shutil.rmtree(nodes(p)[stage].path)
            if stage == "register":
                shutil.rmtree(p / "registry", ignore_errors=True)
            rng = random.Random(f"{args.seed}-{stage}")
            kill_inside(p, stage, "stage", ["modelmake", "build", "--", "--cores", "2"], rng, seconds, work / "a.log")
            kill_inside(p, stage, "snakemake", [snakemake_exe(), "--cores", "2"], rng, seconds, work / "b.log")
            ok = run(p, "modelmake", "build", "--", "--cores", "2").returncode == 0
            left = leftovers(p)
            rows.append({"fault": f"kill -9 in {stage} (stage, then snakemake)", "injected": 2, "survived": 2 * ok,
                         "left_bytes": size(left) + size(scratch_folders() - scratch0), "twice": built_twice(p)})

        p = copy_project(work / "concurrent", built=built)
        for stage in ("quantize", "export"):
            shutil.rmtree(nodes(p)[stage].path)
        procs = [start(p, ["modelmake", "build", f"generate.max_new_tokens={s}", "--", "--cores", "1"],
                       work / f"c{i}.log")
                 for i, s in enumerate(("8,9", "9,10"))]
        ok = sum(proc.wait() == 0 for proc in procs)
        rows.append({"fault": "two concurrent sweeps sharing quantize, export, a generate", "injected": 1,
                     "survived": int(ok == 2), "left_bytes": size(leftovers(p)), "twice": built_twice(p)})

        refused = 0
        for name, (data, must) in BAD_INPUTS.items():
            path = work / f"{name.replace(' ', '_')}.jsonl"
            path.write_bytes(data)
            r = run(built, sys.executable, "-m", "modelmake", "stage", "dataset", f"data.path={path}")
            refused += r.returncode == 2 and f"{path}{must}" in r.stderr
        settings = []
        before = sorted((built / "artifacts").rglob("*"))
        for what, overrides, must in bad_settings(work):
            r = run(built, sys.executable, "-m", "modelmake", "plan", *overrides)
            lines = r.stderr.strip().splitlines()
            settings.append([what, "yes" if r.returncode == 2 else f"no (exit {r.returncode})",
                             "yes" if len(lines) == 1 and must in lines[0] else "no"])
        untouched = sorted((built / "artifacts").rglob("*")) == before
    finally:
        subprocess.run(["rm", "-rf", str(work)])
    total = {k: sum(r[k] for r in rows) for k in ("injected", "survived", "left_bytes", "twice")}
    table = md_table(
        ("fault", "injected", "survived without a flag", "bytes left behind", "artifacts built twice"),
        [[r["fault"], r["injected"], r["survived"], r["left_bytes"], r["twice"]] for r in rows]
        + [["**all**", total["injected"], total["survived"], total["left_bytes"], total["twice"]]])
    bad = f"bad inputs tried: {len(BAD_INPUTS)}, refused naming file:line: {refused} ({', '.join(BAD_INPUTS)})"
    early = md_table(("bad input", "refused before work", "in one line naming the file or field"), settings)
    n_before = sum(row[1] == "yes" for row in settings)
    n_named = sum(row[2] == "yes" for row in settings)
    print("\n" + table)
    print("\n" + bad)
    print("\n" + early + f"\n\n{len(settings)} tried, {n_before} refused before work, {n_named} in one line naming "
          f"the file or field; artifacts untouched: {untouched}")
    write_section("faults", "Faults survived", "\n\n".join([
        "A fresh copy of the project built cold once; then, per stage, a copy without that stage's artifact: kill -9 "
        f"of the stage process at a seeded random point inside the stage (seed {args.seed}), then of Snakemake "
        "inside it, then one plain `modelmake build` (no flag); then two concurrent sweeps sharing quantize and "
        "export. Against a build without faults: it survives, leaves 0 bytes behind and builds nothing twice.",
        table,
        "Bad data files given to the dataset stage (`python -m modelmake stage dataset data.path=FILE`): each must "
        "be refused (exit 2) naming the file and line. " + bad[0].upper() + bad[1:] + ".",
        "Bad settings, models and files given to `modelmake plan`: each must be refused before any work, in one "
        f"line naming the file or the field ({len(settings)} tried, {n_before} refused before work, {n_named} in one "
        f"line naming it; the artifacts folder untouched: {untouched}).",
        early,
    ]))


if __name__ == "__main__":
    main()
