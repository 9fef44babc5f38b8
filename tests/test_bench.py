"""Every bench script starts: its imports (bench/common, the tests' helpers) resolve and its options
parse. `make bench` runs them for real (about an hour on 2 cores, so no test does); this catches a
script left behind by a change to what it imports at the top."""

from __future__ import annotations

import sys

import pytest

from helpers.project import REPO, run

SCRIPTS = sorted(p.name for p in (REPO / "bench").glob("*.py") if p.name != "common.py")


def test_every_bench_script_is_run_by_make_bench():
    makefile = (REPO / "Makefile").read_text()
    left = [s for s in SCRIPTS if f"bench/{s}" not in makefile and s not in ("gpu_check.py", "llamacpp.py")]
    assert left == []  # gpu_check: bench/gpu.sh runs it on a lent GPU; llamacpp: decode.py drives it


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_bench_script_starts(script):
    r = run(REPO, sys.executable, f"bench/{script}", "--help", timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("usage:"), r.stderr[-2000:]
