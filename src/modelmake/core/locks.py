"""OS file locks (flock) that say who is alive: a build, an artifact being built, a temporary folder
being written. The kernel drops a flock when its holder dies (even by kill -9), so "can I take it?"
answers "is its owner gone?" with no pid files to go stale.

- the project lock (`.snakemake/modelmake.lock`): every Snakemake run on the project holds it
  shared for its whole life; a run that can take it exclusively knows no other run is alive, so
  Snakemake's own lock files and incomplete markers, and every unlocked temporary folder, are
  leftovers of a crash and are removed (`recover`);
- an artifact lock (`artifacts/<stage>/.<key>.lock`): held while a stage checks for and builds its
  artifact, so a second build of the same artifact waits and then finds it built;
- a folder lock: a temporary folder is flocked (the directory itself) while it is written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

PROJECT_LOCK = "modelmake.lock"
TMP_MARK = ".tmp-"            # atomic_dir's temporary folders: artifacts/<stage>/.<key>.tmp-XXXX
SCRATCH_PREFIX = "modelmake-scratch-"  # stages' scratch folders under the system temp dir


def _try(fd: int, how: int) -> bool:
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if needed), waiting for the holder; the file is
    removed on release. A waiter whose file was removed meanwhile retries on the new one (inode
    check), so removing a released lock file can never let two holders in."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def lock_dir(path: Path) -> int:
    """Flock the folder itself (exclusive, no wait: it was just created); returns the fd to close."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def is_held(path: Path) -> bool:
    """Whether a live process holds the flock of `path` (a folder being written, a lock file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if _try(fd, fcntl.LOCK_EX):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        return True
    finally:
        os.close(fd)


def remove_if_abandoned(path: Path) -> bool:
    """Remove a temporary folder (or lock file) unless a live process holds its flock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return False
    try:
        if not _try(fd, fcntl.LOCK_EX):
            return False
        if Path(path).is_dir():
            make_writable(path)
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return True
    finally:
        os.close(fd)


def make_writable(tree: Path) -> None:
    """Give back the owner's write bit on a finished (read-only) artifact before removing it."""
    for p in [Path(tree), *Path(tree).rglob("*")]:
        with contextlib.suppress(OSError):
            if not p.is_symlink():
                os.chmod(p, p.stat().st_mode | 0o200)


def abandoned_temporaries(artifacts: Path) -> list[Path]:
    """Temporary artifact folders, lock files of finished builds, and stage scratch folders."""
    found = []
    artifacts = Path(artifacts)
    if artifacts.is_dir():
        for stage in artifacts.iterdir():
            if stage.is_dir():
                found += [p for p in stage.iterdir() if p.name.startswith(".") and
                          (TMP_MARK in p.name or p.name.endswith(".lock"))]
    scratch = Path(tempfile.gettempdir())
    found += [p for p in scratch.glob(f"{SCRATCH_PREFIX}*") if p.is_dir()]
    return found


def sweep(artifacts: Path) -> list[Path]:
    """Remove every temporary folder and lock file no live process holds; returns what went."""
    return [p for p in abandoned_temporaries(artifacts) if remove_if_abandoned(p)]


# --- the project lock: one per Snakemake run --------------------------------------------------
_held: dict[str, int] = {}


def recover(snakemake_dir: Path, artifacts: Path) -> list[Path]:
    """Called as the workflow loads: if no other run holds the project lock, remove what dead runs
    left (Snakemake's locks and incomplete markers, temporary folders); then hold the lock shared
    until this process exits. Returns what was removed."""
    snakemake_dir = Path(snakemake_dir)
    snakemake_dir.mkdir(parents=True, exist_ok=True)
    path = snakemake_dir / PROJECT_LOCK
    if str(path) in _held:
        return []
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    removed: list[Path] = []
    if _try(fd, fcntl.LOCK_EX):
        # no live run: every Snakemake lock and incomplete marker belongs to a dead one; the
        # artifacts they would guard are renamed into place whole, so none can be half written
        for sub in ("locks", "incomplete"):
            d = snakemake_dir / sub
            if d.is_dir() and any(d.iterdir()):
                removed.append(d)
                shutil.rmtree(d, ignore_errors=True)
        removed += sweep(artifacts)
    fcntl.flock(fd, fcntl.LOCK_SH)  # (a downgrade, or a wait while another run recovers)
    _held[str(path)] = fd
    return removed

