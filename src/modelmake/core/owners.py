"""Who owns a temporary folder, an artifact lock or a scratch folder, and whether that owner is
provably dead, also when it ran on another host.

An flock says "my holder is alive" only as far as the lock reaches: always on one host, across
hosts only on a shared filesystem that forwards locks (Lustre mounted without `-o flock`, some NFS
set-ups, FUSE mounts without lock forwarding do not). So each of these things also has an owner
record: node name, boot id, PID namespace, pid (and its start time, against pid reuse), the SLURM
job id, cluster and restart count where there is one, and a heartbeat counter that a thread of the
owner bumps every `heartbeat_s()`. A temporary folder's or a scratch folder's record is a sibling
file (`<folder>.owner`, created before the folder, removed after it), an artifact lock's record is
the lock file itself; none is ever inside an artifact.

A reader calls a record's owner dead only with proof (`judge`):
- same host (same boot id and PID namespace): its pid is gone, or is another process now;
- its SLURM node rebooted since (same node name and cluster, another boot id);
- SLURM says its job ended, or ran again since (`scontrol show job`; only for a recorded job id of
  this reader's own cluster);
- or its lease expired by the reader's own clock (`LeaseWatch`): the record did not change for
  `lease_s()` seconds of the reader's monotonic clock. No timestamp written by one host is ever
  compared with another host's clock, so clocks that disagree cannot make a live owner look dead.
Anything else is alive as far as the reader can tell, and stays.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

OWNER_SUFFIX = ".owner"
LEASE_ENV = "MODELMAKE_LEASE_S"
DEFAULT_LEASE_S = 60.0
RECORD_BYTES = 768  # records are rewritten in place, padded to one size: never truncated, never torn by a resize
ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
         "TIMEOUT", "SPECIAL_EXIT", "REVOKED"}  # not COMPLETING: the job's processes may still be running


def lease_s() -> float:
    """How long a record may stay unchanged (by the reader's clock) before its owner counts as dead."""
    with contextlib.suppress(ValueError):
        return max(1.0, float(os.environ.get(LEASE_ENV, DEFAULT_LEASE_S)))
    return DEFAULT_LEASE_S


def heartbeat_s() -> float:
    return max(0.2, lease_s() / 6)


# --- this process ---------------------------------------------------------------------------------
def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def boot_id() -> str:
    return _read("/proc/sys/kernel/random/boot_id") or "unknown"


def pid_namespace() -> str:
    with contextlib.suppress(OSError):
        return os.readlink("/proc/self/ns/pid")
    return "unknown"


def node_name() -> str:
    """The SLURM node this runs on (SLURMD_NODENAME, inside a job), else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def host_id() -> str:
    """Where a pid means something: one boot of one kernel, one PID namespace."""
    return f"{boot_id()}/{pid_namespace()}"


def proc_start(pid: int) -> int | None:
    """A process's start time (clock ticks since boot, /proc/PID/stat field 22): pid reuse shows."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[19])


def identity() -> dict:
    """This process as an owner record holds it (without the heartbeat counter)."""
    pid = os.getpid()
    job = os.environ.get("SLURM_JOB_ID")
    return {
        "node": node_name(),
        "host": socket.gethostname(),
        "boot_id": boot_id(),
        "pidns": pid_namespace(),
        "pid": pid,
        "start": proc_start(pid),
        "slurm_job_id": job,
        "slurm_cluster": os.environ.get("SLURM_CLUSTER_NAME") if job else None,
        "slurm_restart": int(os.environ.get("SLURM_RESTART_COUNT") or 0) if job else None,
    }


# --- records -------------------------------------------------------------------------------------
def encode(record: dict) -> bytes:
    data = json.dumps(record, sort_keys=True).encode()
    return data.ljust(RECORD_BYTES - 1) + b"\n" if len(data) < RECORD_BYTES else data + b"\n"


def decode(raw: bytes | None) -> dict | None:
    if not raw or not raw.strip():
        return None
    try:
        rec = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return rec if isinstance(rec, dict) and "pid" in rec else None


def read_raw(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(64 * 1024)
    except OSError:
        return None


def owner_path(item: Path) -> Path:
    return Path(item).with_name(Path(item).name + OWNER_SUFFIX)


class Owned:
    """A record this process owns: rewritten in place with a bumped counter by the heartbeat
    thread until `release()`."""

    def __init__(self, fd: int, path: Path, what: str, close_fd: bool):
        self.fd, self.path, self.what, self.close_fd = fd, Path(path), what, close_fd
        self.record = identity() | {"what": what, "beat": 0}
        self._lock = threading.Lock()
        self.live = True
        self.write()
        _beats.add(self)

    def write(self) -> None:
        with self._lock:
            if self.live:
                os.pwrite(self.fd, encode(self.record), 0)

    def beat(self) -> None:
        self.record["beat"] += 1
        self.write()

    def release(self, unlink: bool = True) -> None:
        _beats.discard(self)
        with self._lock:
            self.live = False
            if unlink:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            if self.close_fd:
                os.close(self.fd)


def claim(path: Path, what: str) -> Owned:
    """Create `path` (O_EXCL: it must not exist) holding this process's record; the heartbeat
    keeps it fresh until release()."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        return Owned(fd, path, what, close_fd=True)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise


def own_fd(fd: int, path: Path, what: str) -> Owned:
    """Write this process's record into an open file it holds (an artifact lock); the caller
    closes the fd."""
    return Owned(fd, path, what, close_fd=False)


class _Beats:
    """One daemon thread per process bumps every record it owns."""

    def __init__(self):
        self.owned: set[Owned] = set()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.pid = os.getpid()

    def add(self, o: Owned) -> None:
        with self.lock:
            if self.pid != os.getpid():  # a forked child owns nothing of its parent's
                self.owned, self.thread, self.pid = set(), None, os.getpid()
            self.owned.add(o)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self.run, name="modelmake-heartbeat", daemon=True)
                self.thread.start()

    def discard(self, o: Owned) -> None:
        with self.lock:
            self.owned.discard(o)

    def run(self) -> None:
        while True:
            time.sleep(heartbeat_s())
            with self.lock:
                owned = list(self.owned)
            for o in owned:
                with contextlib.suppress(OSError):
                    o.beat()


_beats = _Beats()


# --- is the owner dead? --------------------------------------------------------------------------
@dataclass
class Verdict:
    state: str  # "dead", "alive" or "unknown" (alive until a lease says otherwise)
    reason: str

    @property
    def dead(self) -> bool:
        return self.state == "dead"


def describe(rec: dict) -> str:
    job = f", SLURM job {rec['slurm_job_id']}" if rec.get("slurm_job_id") else ""
    return f"{rec.get('what', 'owner')} of pid {rec.get('pid')} on {rec.get('node')}{job}"


def pid_alive(pid: int, start: int | None = None) -> bool:
    """Whether `pid` on this host is a running process (not a zombie) and, given its recorded
    `start` (proc_start), still the same one rather than a reused pid."""
    now = proc_start(pid)
    if now is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return False  # a zombie: its files are closed, it writes nothing more
    return start is None or now == start


_slurm_cache: dict[str, tuple[float, dict | None]] = {}
_cluster: list[str | None] = []


def _scontrol(*args: str, timeout: float = 15) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


def slurm_cluster() -> str | None:
    """The cluster this process's SLURM commands reach (scontrol show config), once per process."""
    if os.environ.get("SLURM_CLUSTER_NAME"):
        return os.environ["SLURM_CLUSTER_NAME"]
    if not _cluster:
        r = _scontrol("show", "config")
        name = None
        if r is not None and r.returncode == 0:
            for line in r.stdout.splitlines():
                if line.split("=", 1)[0].strip() == "ClusterName":
                    name = line.split("=", 1)[1].strip()
        _cluster.append(name)
    return _cluster[0]


def slurm_job(job_id: str) -> dict | None:
    """{"state", "restarts", "nodes"} of a job as SLURM tells it; {"state": "PURGED"} for a job
    the controller no longer knows (it ended at least MinJobAge ago); None if SLURM cannot say."""
    now = time.monotonic()
    hit = _slurm_cache.get(job_id)
    if hit and now - hit[0] < 2.0:
        return hit[1]
    r = _scontrol("show", "job", "-o", str(job_id))
    info = None
    if r is not None and r.returncode == 0:
        fields = dict(kv.split("=", 1) for kv in r.stdout.split() if "=" in kv)
        info = {"state": fields.get("JobState", "UNKNOWN").split("+")[0], "nodes": fields.get("NodeList"),
                "restarts": int(fields.get("Restarts", 0) or 0)}
    elif r is not None and "Invalid job id" in (r.stderr + r.stdout):
        info = {"state": "PURGED", "nodes": None, "restarts": None}
    _slurm_cache[job_id] = (now, info)
    return info


def judge(rec: dict | None, *, use_slurm: bool = True) -> Verdict:
    """Whether a record's owner is provably dead, from this process's point of view."""
    if rec is None:
        return Verdict("unknown", "no readable owner record")
    me_boot, me_ns = boot_id(), pid_namespace()
    if rec.get("boot_id") == me_boot and rec.get("pidns") == me_ns:
        if pid_alive(int(rec["pid"]), rec.get("start")):
            return Verdict("alive", f"{describe(rec)}: the process is running")
        return Verdict("dead", f"{describe(rec)}: that process has exited (same host)")
    job = rec.get("slurm_job_id")
    here_job = os.environ.get("SLURM_JOB_ID")
    if (job and here_job and rec.get("node") == os.environ.get("SLURMD_NODENAME")
            and rec.get("slurm_cluster") == os.environ.get("SLURM_CLUSTER_NAME") and rec.get("boot_id") != me_boot):
        return Verdict("dead", f"{describe(rec)}: node {rec.get('node')} has rebooted since (boot id changed)")
    if job and use_slurm:
        cluster = slurm_cluster()
        if rec.get("slurm_cluster") in (None, cluster) and cluster is not None:
            info = slurm_job(str(job))
            if info is not None:
                state = info["state"]
                if state == "PURGED":
                    return Verdict("dead", f"{describe(rec)}: SLURM no longer knows the job (ended)")
                if state in ENDED:
                    return Verdict("dead", f"{describe(rec)}: SLURM says the job ended {state} on {info['nodes']}")
                restarts = rec.get("slurm_restart")
                if restarts is not None and info["restarts"] > restarts:
                    return Verdict("dead", f"{describe(rec)}: SLURM restarted the job since (restart "
                                           f"{info['restarts']} > {restarts})")
                return Verdict("unknown", f"{describe(rec)}: SLURM says the job is {state}")
    return Verdict("unknown", f"{describe(rec)}: another host")


@dataclass
class LeaseWatch:
    """Fingerprints of records (their raw bytes, or a folder's stat) as first seen by this
    process's monotonic clock: one that stays the same for `lease` seconds has expired."""

    lease: float = field(default_factory=lease_s)
    seen: dict = field(default_factory=dict)

    def expired(self, key, fingerprint) -> bool:
        now = time.monotonic()
        first = self.seen.get(key)
        if first is None or first[0] != fingerprint:
            self.seen[key] = (fingerprint, now)
            return False
        return now - first[1] >= self.lease

    def waited(self, key) -> float:
        first = self.seen.get(key)
        return time.monotonic() - first[1] if first else 0.0
