"""An artifact knows its place: its manifest's stage and key are the folder's and the ones its
reader expects, it holds exactly the files it lists, and a lineage is checked folder by folder in
the places the parents name. Crafted folders, nothing built."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from modelmake.core.errors import ModelmakeError
from modelmake.core.manifest import file_hashes, verify, verify_lineage


def artifact(root: Path, stage: str, key: str, inputs: dict | None = None, body: str = "x") -> Path:
    folder = root / "artifacts" / stage / key
    folder.mkdir(parents=True)
    (folder / "data.txt").write_text(body)
    inputs = {name: {"key": k, "path": f"artifacts/{name}/{k}"} for name, k in (inputs or {}).items()}
    manifest = {"stage": stage, "key": key, "path": f"artifacts/{stage}/{key}", "inputs": inputs,
                "files": file_hashes(folder), "config": {}, "code": {"sha256": "c"}, "data": {}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def chain(tmp_path):
    artifact(tmp_path, "dataset", "aaaaaaaaaaaa", body="records one")
    artifact(tmp_path, "dataset", "bbbbbbbbbbbb", body="records two")
    top = artifact(tmp_path, "finetune", "cccccccccccc", {"dataset": "aaaaaaaaaaaa"})
    return tmp_path, top


def test_a_lineage_in_its_places_verifies(chain):
    root, top = chain
    assert verify_lineage(top, root) == 2


def test_a_folder_swapped_for_another_artifact_is_refused_naming_both_keys(chain):
    root, top = chain
    place, other = root / "artifacts/dataset/aaaaaaaaaaaa", root / "artifacts/dataset/bbbbbbbbbbbb"
    shutil.rmtree(place)
    shutil.copytree(other, place)  # its own manifest comes along: it matches itself
    with pytest.raises(ModelmakeError) as e:
        verify_lineage(top, root)
    assert "bbbbbbbbbbbb" in str(e.value) and "aaaaaaaaaaaa" in str(e.value) and "substituted" in str(e.value)
    with pytest.raises(ModelmakeError, match="substituted"):
        verify(place, "dataset", "aaaaaaaaaaaa")


def test_an_artifact_read_for_another_key_is_refused(chain):
    root, _ = chain
    with pytest.raises(ModelmakeError, match="but dataset aaaaaaaaaaaa was expected"):
        verify(root / "artifacts/dataset/bbbbbbbbbbbb", "dataset", "aaaaaaaaaaaa")


@pytest.mark.parametrize("change,named", [
    (lambda f: (f / "data.txt").write_text("edited"), "data.txt: content changed"),
    (lambda f: (f / "extra.txt").write_text("more"), "extra.txt: not in the manifest"),
    (lambda f: (f / "data.txt").unlink(), "data.txt: missing"),
    (lambda f: (f / "empty").mkdir(), "empty/: an empty folder, not in the manifest"),
])
def test_every_difference_from_the_manifest_is_named(chain, change, named):
    root, top = chain
    change(root / "artifacts/dataset/aaaaaaaaaaaa")
    with pytest.raises(ModelmakeError) as e:
        verify_lineage(top, root)
    assert named in str(e.value)
