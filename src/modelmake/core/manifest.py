"""Provenance: what each artifact's manifest says, checking it against the files, and the
lineage of any artifact printed back to the data it was built from."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from modelmake.core.errors import ModelmakeError

MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` but the manifest itself, by relative path."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def read_manifest(artifact: Path) -> dict:
    path = Path(artifact) / MANIFEST
    if not path.is_file():
        raise ModelmakeError(f"{artifact}: no {MANIFEST}; not a finished modelmake artifact")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelmakeError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None


def verify(artifact: Path, stage: str | None = None, key: str | None = None) -> dict:
    """The manifest, after checking that the artifact knows its place (its manifest's stage and key
    are the folder's, and the ones its reader expects: `stage`, `key`) and that the folder holds
    exactly the files it lists, unchanged, and no empty folder besides."""
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    listed = manifest.get("files")
    if listed is None:
        raise ModelmakeError(f"{artifact}/{MANIFEST}: has no 'files' list to check against")
    said = (manifest.get("stage"), manifest.get("key"))
    if said != (artifact.parent.name, artifact.name):
        raise ModelmakeError(f"{artifact}: its manifest is the {said[0]} artifact {said[1]}, not the one this "
                             f"folder's place names ({artifact.parent.name} {artifact.name}): a substituted artifact")
    if (stage, key) != (None, None) and said != (stage or said[0], key or said[1]):
        raise ModelmakeError(f"{artifact}: holds the {said[0]} artifact {said[1]}, but {stage} {key} was expected")
    actual = file_hashes(artifact)
    problems = [f"{name}: missing" for name in sorted(set(listed) - set(actual))]
    problems += [f"{name}: not in the manifest" for name in sorted(set(actual) - set(listed))]
    problems += [f"{name}: content changed" for name in sorted(set(listed) & set(actual))
                 if listed[name] != actual[name]]
    problems += [f"{p.relative_to(artifact)}/: an empty folder, not in the manifest"
                 for p in sorted(artifact.rglob("*")) if p.is_dir() and not any(p.iterdir())]
    if problems:
        raise ModelmakeError(f"{artifact}: does not match its manifest:\n  " + "\n  ".join(problems))
    return manifest


def lineage(artifact: Path, root: Path) -> list[dict]:
    """This artifact's manifest and its inputs', depth first, each once: every input read from the
    folder its parent's manifest points to (`path`), with the stage and key the parent expects."""
    out, seen = [], set()

    def walk(path: Path, depth: int, expect: tuple[str, str] | None):
        m = read_manifest(path)
        entry = {"depth": depth, "manifest": m, "path": path, "expect": expect}
        if (m["stage"], m["key"]) in seen and depth:
            out.append(entry | {"seen": True})
            return
        seen.add((m["stage"], m["key"]))
        out.append(entry | {"seen": False})
        for name, inp in m.get("inputs", {}).items():
            walk(root / inp["path"], depth + 1, (name.split(".")[0], inp["key"]))

    walk(Path(artifact), 0, None)
    return out


def verify_lineage(artifact: Path, root: Path) -> int:
    """verify() the artifact and every artifact it was built from, each once and in the place its
    parent names; returns how many. Every mismatch of every folder is reported together."""
    problems, checked = [], 0
    for entry in lineage(artifact, root):
        if entry["seen"]:
            continue
        checked += 1
        try:
            verify(entry["path"], *(entry["expect"] or (None, None)))
        except ModelmakeError as e:
            problems.append(str(e))
    if problems:
        raise ModelmakeError("\n".join(problems))
    return checked


def explain(artifact: Path, root: Path) -> str:
    """A readable lineage: stage, key, config, code, data hashes and metrics, back to the data."""
    lines = []
    for entry in lineage(artifact, root):
        m, pad = entry["manifest"], "    " * entry["depth"]
        head = f"{pad}{m['stage']} {m['key']}  {m['path']}"
        if entry["seen"]:
            lines.append(head + "  (above)")
            continue
        lines.append(head)
        lines.append(f"{pad}  built {m.get('finished', '?')} on {m.get('host', '?')} in {m.get('seconds', '?')} s, "
                     f"code {m['code']['sha256'][:12]}")
        libs = ", ".join(f"{k} {v}" for k, v in m["code"].get("libraries", {}).items())
        if libs:
            lines.append(f"{pad}  libraries: {libs}")
        for group, values in m.get("config", {}).items():
            lines.append(f"{pad}  config {group}: {json.dumps(values, sort_keys=True)}")
        for path, digest in m.get("data", {}).items():
            lines.append(f"{pad}  data {path} sha256:{digest}")
        metrics = {k: v for k, v in (m.get("metrics") or {}).items() if isinstance(v, (int, float, str))}
        if metrics:
            lines.append(f"{pad}  metrics: " + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    return "\n".join(lines)
