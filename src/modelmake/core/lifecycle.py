"""A stage process dies with the build that started it.

Snakemake runs each stage as `bash -c "... python -m modelmake stage <name>"`. After a kill -9 of
Snakemake, bash and the stage ran on as orphans, writing an artifact nobody waits for. So a stage:
- asks the kernel for SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG),
- watches the Snakemake process itself (MODELMAKE_PARENT_PID, set by the workflow as it loads),
  since bash, its direct parent, outlives Snakemake; only where that pid means that process
  (MODELMAKE_PARENT_HOST: the same boot and PID namespace), never a pid of another host's;
- turns SIGTERM into SystemExit, so the temporary folder and the scratch folders are removed on
  the way out (atomic_dir, scratch_dir), as on any other failure.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time

from modelmake.core.owners import host_id, pid_alive, proc_start

PARENT_ENV = "MODELMAKE_PARENT_PID"
PARENT_HOST_ENV = "MODELMAKE_PARENT_HOST"  # owners.host_id() of the process PARENT_ENV names
PR_SET_PDEATHSIG = 1


def pdeathsig(sig: int = signal.SIGTERM) -> None:
    """Deliver `sig` to this process when its parent dies (Linux; a no-op elsewhere). Also usable
    as a subprocess preexec_fn, so a stage's own children die with it."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def die_with_parent(poll_s: float = 0.5) -> None:
    """Install the three guards above in a stage process (main thread)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    pdeathsig()
    parent = os.environ.get(PARENT_ENV)
    if not parent or not parent.isdigit() or int(parent) == os.getpid():
        return
    where = os.environ.get(PARENT_HOST_ENV)
    if where and where != host_id():  # a pid of another host (a submit host's, seen on a node)
        return
    pid = int(parent)
    start = proc_start(pid)  # so a pid the kernel reuses after the build ended does not count as it
    if not pid_alive(pid, start):  # the build is already gone
        os.kill(os.getpid(), signal.SIGTERM)

    def watch():
        while pid_alive(pid, start):
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="modelmake-watchdog", daemon=True).start()


def children(pid: int | None = None) -> list[int]:
    """The live child processes of `pid` (this process by default), read from /proc."""
    pid = os.getpid() if pid is None else pid
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def stop_children_on_signal() -> None:
    """For a process whose jobs are its children (Snakemake's local jobs, each a `bash -c`): on
    SIGTERM or SIGINT, SIGTERM every child, then raise KeyboardInterrupt, Snakemake's own way to
    stop (it cancels its executor: SLURM jobs are cancelled too). A child stage dies with its bash
    (PR_SET_PDEATHSIG) and removes its temporary folders on the way out. Snakemake's own SIGTERM
    handler only stops new jobs and waits for the running ones, which can hold a GPU for hours."""
    def stop(signum, frame):
        for child in children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
