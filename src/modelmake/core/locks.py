"""Locks that say who is alive: a build, an artifact being built, a temporary folder being written,
on one host and across the hosts of a cluster.

- the project lock (`.snakemake/modelmake.lock`): every Snakemake run on the project holds it
  shared (flock) for its whole life; a run that can take it exclusively knows no other run *of this
  host* (or of a shared filesystem that forwards locks) is alive, so Snakemake's own lock files and
  incomplete markers are leftovers of a crash and are removed (`recover`);
- an artifact lock (`artifacts/<stage>/.<key>.lock`): flocked while a stage checks for and builds
  its artifact, so a second build of the same artifact waits and then finds it built; the lock file
  holds its owner's record (core.owners), so a waiter on a host the flock does not reach still
  waits for a live owner, and takes over from a provably dead one;
- a temporary folder (atomic_dir) or a scratch folder (scratch_dir): flocked while written, with
  an owner record beside it (`<folder>.owner`).

The kernel drops an flock when its holder dies (even by kill -9), so on one host a held flock is
proof of life. A free one proves nothing on a shared filesystem whose locks do not cross hosts
(Lustre without `-o flock`, some NFS set-ups): there a build on node B would have removed a live
build's temporary folder on node A. So `sweep` removes only what it can prove dead
(`owners.judge`: a dead process of its own host, a job SLURM says ended, a rebooted node, or a
lease that expired by the reader's own clock); the rest stays, and what is still in doubt is
watched for one lease in the background (`recover`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from modelmake.core import owners
from modelmake.core.owners import OWNER_SUFFIX, LeaseWatch, Verdict

PROJECT_LOCK = "modelmake.lock"
TMP_MARK = ".tmp-"            # atomic_dir's temporary folders: artifacts/<stage>/.<key>.tmp-XXXX
SCRATCH_PREFIX = "modelmake-scratch-"  # stages' scratch folders under the system temp dir
LOCK_POLL_S = 0.5             # how often a waiter looks again at a lock held where its flock does not reach
Say = Callable[[Path, str], None]


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
    """Hold an exclusive flock on `path` (created if needed), waiting for the holder; the file
    holds this process's owner record while held and is removed on release. A waiter whose file
    was removed meanwhile retries on the new one (inode check), so removing a released lock file
    can never let two holders in. A waiter that gets the flock but finds the record of an owner
    not provably dead (one its flock does not reach: another host, a mount without lock
    forwarding) waits for it too, until it lets go, is proven dead or its lease expires."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    watch = LeaseWatch()
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            raw = os.pread(fd, 64 * 1024, 0)
            rec = owners.decode(raw)
            if rec is None:
                break
            verdict = owners.judge(rec)
            if verdict.dead or (verdict.state == "unknown" and watch.expired(str(path), raw)):
                break  # a dead holder's record: taken over
        os.close(fd)
        time.sleep(LOCK_POLL_S if same else 0)
    owned = owners.own_fd(fd, path, "lock")
    try:
        yield
    finally:
        owned.release(unlink=False)
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


def make_writable(tree: Path) -> None:
    """Give back the owner's write bit on a finished (read-only) artifact before removing it."""
    for p in [Path(tree), *Path(tree).rglob("*")]:
        with contextlib.suppress(OSError):
            if not p.is_symlink():
                os.chmod(p, p.stat().st_mode | 0o200)


def abandoned_temporaries(artifacts: Path) -> list[Path]:
    """What a crash can leave: temporary artifact folders, lock files, stage scratch folders, and
    owner records whose folder is gone (an owner file stands for its folder otherwise)."""
    found = []
    artifacts = Path(artifacts)
    candidates = []
    if artifacts.is_dir():
        for stage in artifacts.iterdir():
            if stage.is_dir():
                candidates += [p for p in stage.iterdir() if p.name.startswith(".") and
                               (TMP_MARK in p.name or p.name.endswith(".lock"))]
    candidates += list(Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"))
    names = {p.name for p in candidates}
    for p in candidates:
        if p.name.endswith(OWNER_SUFFIX):
            if p.name.removesuffix(OWNER_SUFFIX) not in names:
                found.append(p)  # its folder already went (removed or renamed into place)
        elif p.name.endswith(".lock") or p.is_dir():
            found.append(p)
    return found


def _record_of(item: Path) -> Path:
    """Where an item's owner record is: an artifact lock holds its own, a folder has a sibling."""
    if item.name.endswith(".lock") or item.name.endswith(OWNER_SUFFIX):
        return item
    return owners.owner_path(item)


def fingerprint(item: Path):
    """What changes while an owner lives: its record's bytes (the heartbeat counter), or, for a
    folder without a record (an older modelmake's), the folder's own times."""
    raw = owners.read_raw(_record_of(item))
    if raw is not None:
        return raw
    with contextlib.suppress(OSError):
        st = os.stat(item)
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_size)
    return None


def judge_item(item: Path) -> Verdict:
    """Whether what holds `item` is provably dead. A held flock is proof of life where it reaches;
    a free one proves nothing across hosts: the owner record decides."""
    try:
        fd = os.open(item, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return Verdict("alive", "gone already")
    except PermissionError:
        return Verdict("alive", "not readable")
    try:
        if not _try(fd, fcntl.LOCK_EX):
            return Verdict("alive", "its flock is held")
    finally:
        os.close(fd)
    record = _record_of(item)
    raw = owners.read_raw(record)
    if raw is None and record != item:
        return Verdict("unknown", "no owner record beside it (an older modelmake's?), its flock free")
    return owners.judge(owners.decode(raw))


def _remove(item: Path, judged) -> bool:
    """Remove a dead owner's item (and its owner record), unless its fingerprint changed since it
    was `judged`. A lock file is removed under its flock, after a last look at its record (a new
    holder may have taken it over from the dead one)."""
    item = Path(item)
    if item.name.endswith(".lock"):
        try:
            fd = os.open(item, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            if not _try(fd, fcntl.LOCK_EX) or os.pread(fd, 64 * 1024, 0) != judged:
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(item)
            return True
        finally:
            os.close(fd)
    if fingerprint(item) != judged:
        return False
    if item.is_dir():
        make_writable(item)
        shutil.rmtree(item, ignore_errors=True)
        if item.exists():
            return False
    elif not item.name.endswith(OWNER_SUFFIX):
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_record_of(item))
    return True


def sweep(artifacts: Path, say: Say | None = None, pending: list | None = None,
          watch: LeaseWatch | None = None) -> list[Path]:
    """Remove every temporary folder, lock file and scratch folder whose owner is provably dead;
    returns what went. With `pending` (and `watch`), what is still in doubt is listed there, its
    fingerprint noted in `watch` for a lease."""
    removed = []
    for item in abandoned_temporaries(artifacts):
        fp = fingerprint(item)
        verdict = judge_item(item)
        if verdict.dead:
            if _remove(item, fp):
                removed.append(item)
                if say:
                    say(item, verdict.reason)
        elif verdict.state == "unknown" and pending is not None and watch is not None:
            watch.expired(item, fp)
            pending.append(item)
    return removed


def reap(pending: list[Path], watch: LeaseWatch, say: Say | None = None, rounds: int = 3) -> list[Path]:
    """Watch what `sweep` could not decide for up to `rounds` leases of this process's own clock:
    an item whose owner is proven dead meanwhile, or whose record did not change for a whole
    lease, is removed; one whose record changed is alive and left alone."""
    removed = []
    pending = list(pending)
    for _ in range(rounds):
        if not pending:
            break
        time.sleep(watch.lease / 2)
        still = []
        for item in pending:
            fp = fingerprint(item)
            if fp is None:
                continue  # gone: its owner finished
            verdict = judge_item(item)
            if verdict.state == "alive":
                continue
            if verdict.dead or watch.expired(item, fp):
                reason = verdict.reason if verdict.dead else (
                    f"{verdict.reason}; its record did not change for {watch.waited(item):.0f} s "
                    f"(lease {watch.lease:g} s, by this host's clock)")
                if _remove(item, fp):
                    removed.append(item)
                    if say:
                        say(item, reason)
            elif watch.seen.get(item, (None,))[0] == fp:
                still.append(item)  # unchanged so far: look again
        pending = still
    return removed


def _say_stderr(item: Path, reason: str) -> None:
    print(f"modelmake: removed {item} (left by a build that is no longer running: {reason})", file=sys.stderr)


# --- the project lock: one per Snakemake run --------------------------------------------------
_held: dict[str, int] = {}


def recover(snakemake_dir: Path, artifacts: Path, say: Say | None = _say_stderr) -> list[Path]:
    """Called as the workflow loads: if no other run holds the project lock, remove Snakemake's
    locks and incomplete markers (left by dead runs); remove every temporary folder, lock file and
    scratch folder whose owner is provably dead, and watch those in doubt for a lease in a
    background thread; then hold the project lock shared until this process exits. Returns what
    was removed now."""
    snakemake_dir = Path(snakemake_dir)
    snakemake_dir.mkdir(parents=True, exist_ok=True)
    path = snakemake_dir / PROJECT_LOCK
    if str(path) in _held:
        return []
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    removed: list[Path] = []
    if _try(fd, fcntl.LOCK_EX):
        # no live run on this host: every Snakemake lock and incomplete marker belongs to a dead
        # one; the artifacts they would guard are renamed into place whole, so none can be half written
        for sub in ("locks", "incomplete"):
            d = snakemake_dir / sub
            if d.is_dir() and any(d.iterdir()):
                removed.append(d)
                shutil.rmtree(d, ignore_errors=True)
                if say:
                    say(d, "Snakemake's own records")
    # only what is provably dead goes, so this is safe beside live runs, on any host
    watch, pending = LeaseWatch(), []
    removed += sweep(artifacts, say=say, pending=pending, watch=watch)
    if pending:
        threading.Thread(target=reap, args=(pending, watch, say), name="modelmake-reaper", daemon=True).start()
    fcntl.flock(fd, fcntl.LOCK_SH)  # (a downgrade, or a wait while another run recovers)
    _held[str(path)] = fd
    return removed
