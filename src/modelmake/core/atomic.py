"""Atomic outputs: a stage writes into a temporary sibling folder, then renames it into place.

A crash or a refusal leaves no folder that could be mistaken for a finished one: the final path
either does not exist or holds everything, manifest included (the manifest is the file target
the build graph waits for, written last inside the temporary folder). The temporary folder is
flocked while it is written and has its owner's record beside it (`<folder>.owner`, created first
and removed last: core.owners), so the next build, on this host or another, can tell a dead
build's leftovers (removed, see locks.sweep) from a live one's. Finished files are read-only;
modes follow the umask (mkdtemp and mkstemp alone would give 0700 / 0600 whatever it says).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from modelmake.core import owners
from modelmake.core.locks import SCRATCH_PREFIX, TMP_MARK, lock_dir, make_writable


def umask() -> int:
    """The process umask, read without changing it (os.umask can only set it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


def finish_modes(tree: Path) -> None:
    """Folders rwx and files read-only, as the umask allows: a finished artifact is not edited."""
    mask = umask()
    for p in [Path(tree), *Path(tree).rglob("*")]:
        if p.is_symlink():
            continue
        if p.is_dir():
            os.chmod(p, 0o777 & ~mask)
        else:
            os.chmod(p, 0o444 & ~mask)


def owned_folder(parent: Path, prefix: str, what: str) -> tuple[Path, owners.Owned]:
    """A new folder `parent/prefix<random>` (mode 0700, as mkdtemp) whose owner record
    `<folder>.owner` exists before it: no folder is ever seen without its owner."""
    for _ in range(100):
        path = Path(parent) / f"{prefix}{secrets.token_hex(4)}"
        try:
            owned = owners.claim(owners.owner_path(path), what)
        except FileExistsError:
            continue
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            owned.release()
            continue
        except BaseException:
            owned.release()
            raise
        return path, owned
    raise FileExistsError(f"no free temporary name {prefix}* in {parent}")


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to `final`; on success replace `final` with it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp, owned = owned_folder(final.parent, f".{final.name}{TMP_MARK}", "temporary folder")
    fd = lock_dir(tmp)  # while held, no other build of this host takes this folder for a dead one's
    try:
        yield tmp
        finish_modes(tmp)
        if final.exists():  # a stale, unfinished or forced rebuild: replace it whole
            make_writable(final)
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            final.rmdir()  # the empty folder Snakemake makes for its output (never a finished one)
        raise
    finally:
        os.close(fd)
        owned.release()  # the record goes last: the folder is renamed into place or removed


@contextlib.contextmanager
def scratch_dir(name: str) -> Iterator[Path]:
    """A flocked scratch folder under the system temp dir, with its owner record beside it, removed
    after (or by the next build on this host if this process is killed: locks.sweep takes
    `modelmake-scratch-*` folders whose owner is dead)."""
    path, owned = owned_folder(Path(tempfile.gettempdir()), f"{SCRATCH_PREFIX}{name}-", "scratch folder")
    fd = lock_dir(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)
        owned.release()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a file via a temporary sibling and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj, **kw) -> None:
    """Write JSON atomically (see write_text)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str, **kw) + "\n")


FICLONE = 0x40049409  # Linux ioctl: a copy-on-write clone (btrfs, xfs, ...)


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """An independent copy of `src` at `dst` (never a hard link: an edit of one must not change the
    other), as a copy-on-write clone where the file system has them; returns the sha256 of what was
    written, read in the same pass as the copy."""
    import fcntl
    import hashlib

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        try:
            fcntl.ioctl(fo.fileno(), FICLONE, fi.fileno())
        except OSError:
            for chunk in iter(lambda: fi.read(1 << 20), b""):
                h.update(chunk)
                fo.write(chunk)
            return h.hexdigest()
    with open(dst, "rb") as f:  # a clone shares the source's blocks: hash what the copy holds
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
