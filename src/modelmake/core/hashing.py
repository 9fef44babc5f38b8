"""sha256 of data and model files, memoized on disk by path + size + mtime + inode.

Keys cover the content of every file a stage reads (a 540 MB model folder, a 98 MB GGUF), and
Snakemake plans on every start: re-reading them each time would make a no-op dry run slow. A
file whose path, size, mtime and inode are unchanged is taken to be unchanged (what make, rsync
and git's index assume); anything else is hashed again. Facts derived from a file's content (a
GGUF's architecture) are memoized by its hash the same way.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

from modelmake.core.atomic import write_text
from modelmake.core.manifest import sha256
from modelmake.core.paths import ROOT

_LOCK = threading.Lock()
_MEMO: dict | None = None
_DIRTY = False


def cache_file() -> Path:
    return Path(os.environ.get("MODELMAKE_HASH_MEMO", ROOT / ".modelmake")) / "sha256-cache.json"


def _memo() -> dict:
    global _MEMO
    if _MEMO is None:
        try:
            _MEMO = json.loads(cache_file().read_text())
        except (OSError, ValueError):
            _MEMO = {}  # no cache or a damaged one: hash again, lose nothing
        _MEMO.setdefault("files", {})
        _MEMO.setdefault("facts", {})
    return _MEMO


def _save() -> None:
    global _DIRTY
    if _DIRTY:
        try:
            write_text(cache_file(), json.dumps(_memo(), sort_keys=True))
        except OSError:
            pass  # a read-only project still plans; it only hashes again next time
        _DIRTY = False


def file_sha256(path: str | os.PathLike) -> str:
    global _DIRTY
    path = Path(path).resolve()
    st = path.stat()
    stamp = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
    with _LOCK:
        hit = _memo()["files"].get(str(path))
        if hit and hit[0] == stamp:
            return hit[1]
    digest = sha256(path)
    with _LOCK:
        _memo()["files"][str(path)] = [stamp, digest]
        _DIRTY = True
        _save()
    return digest


def fact(digest: str, name: str, compute: Callable[[], object]):
    """A fact about the content with this sha256 (JSON-able), computed once."""
    global _DIRTY
    key = f"{digest}:{name}"
    with _LOCK:
        if key in _memo()["facts"]:
            return _memo()["facts"][key]
    value = compute()
    with _LOCK:
        _memo()["facts"][key] = value
        _DIRTY = True
        _save()
    return value
