"""Session fixtures: one real cold build of the whole chain, in a copy of the project, per session.

Tests then ask Snakemake itself (dry runs) what a change would rebuild, and compare the built
ONNX graphs and adapters against torch + peft on the same weights. A test that asks for a built
project (these fixtures) is marked `slow` here; `pytest -m "not slow"` (make test-fast) builds nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.project import SECRETS, build, copy_project, nodes

BUILDING = {"project", "second", "folders", "built", "smol", "slurm"}  # fixtures that build or start daemons


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


SECOND = ("lora.r=4", "train.seed=1", "train.lr=2e-3")


@pytest.fixture(scope="session")
def second(project) -> dict:
    """A second adapter (another rank, seed and learning rate) on the same quantize and export."""
    build(project, *SECOND, until="adapter")
    return nodes(project, *SECOND)
