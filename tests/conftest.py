"""Session fixtures: one real cold build of the whole chain, in a copy of the project, per session.

Tests then ask Snakemake itself (dry runs) what a change would rebuild, and compare the built
ONNX graphs and adapters against torch + peft on the same weights. A test that asks for a built
project (these fixtures) is marked `slow` here; `pytest -m "not slow"` (make test-fast) builds nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from helpers.project import SECRETS, build, copy_project, git, nodes, run

BUILDING = {"project", "second", "release", "folders", "built", "slurm"}  # fixtures that build or start daemons


def pytest_configure(config):
    """A suite stopped by SIGTERM (CI's timeout, a kill) tears down as after Ctrl-C: Python's
    default for SIGTERM ends the process at once, leaving the daemons fixtures started (SLURM's
    nodes, Azurite) running with no one to stop them."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def pytest_collection_modifyitems(items):
    for item in items:
        if BUILDING & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> Path:
    """The whole default chain, built cold with Snakemake in a fresh copy of the project."""
    dst = copy_project(tmp_path_factory.mktemp("built") / "modelmake")
    build(dst, env=SECRETS)
    return dst


@pytest.fixture(scope="session")
def release(tmp_path_factory) -> Path:
    """`make run` as a user runs it on a fresh clone: SmolLM2 through the whole recipe, then DVC
    adopts the release. The copy is a git repository of the project as committed here (dvc.lock
    included), so `git status` afterwards shows what the build changed."""
    dst = copy_project(tmp_path_factory.mktemp("release") / "modelmake", with_dvc=True)
    git(dst, "init", "-q")
    git(dst, "add", "-A")
    git(dst, "commit", "-qm", "the project as committed")
    venv = Path(sys.executable).parent.parent
    r = run(dst, "make", "run", f"VENV={venv}", "INSTALL=", timeout=3600)
    assert r.returncode == 0, f"make run failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    (dst.parent / "make-run.out").write_text(r.stdout + r.stderr)  # beside the clone: git status stays its own
    return dst


SECOND = ("lora.r=4", "train.seed=1", "train.lr=2e-3")


@pytest.fixture(scope="session")
def second(project) -> dict:
    """A second adapter (another rank, seed and learning rate) on the same quantize and export."""
    build(project, *SECOND, until="adapter")
    return nodes(project, *SECOND)
