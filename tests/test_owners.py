"""Owner records and multi-host safe recovery (core/owners, core/locks), without a cluster: what a
build may remove is what it can prove dead. The same on two real nodes (a FUSE mount whose locks do
not cross them, clocks a minute apart, a node lost) is tests/test_cluster.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from modelmake.core import locks, owners
from modelmake.core.atomic import atomic_dir, scratch_dir
from modelmake.graph.cluster import explain_job
from modelmake.graph.snakemake import failed_jobs, job_logs

SRC = Path(__file__).resolve().parents[1] / "src"
OTHER_BOOT = "11111111-2222-4333-8444-555555555555"


@pytest.fixture(autouse=True)
def short_lease(monkeypatch):
    monkeypatch.setenv(owners.LEASE_ENV, "1")
    monkeypatch.setattr(owners, "_slurm_cache", {})
    monkeypatch.setattr(owners, "_cluster", [])


def foreign(what: str, **kw) -> dict:
    """The record of an owner on another host (another boot id)."""
    return owners.identity() | {"boot_id": OTHER_BOOT, "node": "elsewhere", "what": what, "beat": 0} | kw


def plant_folder(parent: Path, name: str, record: dict | None) -> Path:
    folder = parent / name
    folder.mkdir(parents=True)
    (folder / "half.bin").write_bytes(b"x" * 100)
    if record is not None:
        owners.owner_path(folder).write_bytes(owners.encode(record))
    return folder


class Beating:
    """Another host's owner that is alive: its counter moves (written here by a thread)."""

    def __init__(self, path: Path, record: dict):
        self.path, self.record, self.stop = path, dict(record), threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.wait(0.1):
            self.record["beat"] += 1
            fd = os.open(self.path, os.O_RDWR)
            os.pwrite(fd, owners.encode(self.record), 0)
            os.close(fd)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


# --- records ----------------------------------------------------------------------------------
def test_a_temporary_folder_has_its_owner_beside_it_and_nothing_after(tmp_path):
    final = tmp_path / "artifacts" / "finetune" / "abcdef012345"
    with atomic_dir(final) as tmp:
        record = owners.decode(owners.read_raw(owners.owner_path(tmp)))
        assert record["pid"] == os.getpid() and record["boot_id"] == owners.boot_id()
        assert record["node"] == owners.node_name() and record["start"] == owners.proc_start(os.getpid())
        assert record["what"] == "temporary folder" and not (tmp / ".owner").exists()
        first = record["beat"]
        time.sleep(1.0)  # heartbeat every lease/6 (at least 0.2 s)
        assert owners.decode(owners.read_raw(owners.owner_path(tmp)))["beat"] > first
        (tmp / "w.bin").write_bytes(b"w")
    assert sorted(p.name for p in final.parent.iterdir()) == ["abcdef012345"]  # the record went with it
    assert sorted(p.name for p in final.iterdir()) == ["w.bin"]
    with pytest.raises(RuntimeError), atomic_dir(final.parent / "bbbbbbbbbbbb"):
        raise RuntimeError("refused")
    assert sorted(p.name for p in final.parent.iterdir()) == ["abcdef012345"]


def test_a_scratch_folder_has_its_owner_too(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with scratch_dir("export") as s:
        assert owners.owner_path(s).exists() and s.name.startswith(locks.SCRATCH_PREFIX)
        assert locks.sweep(tmp_path / "artifacts") == [] and s.is_dir()
    assert list(tmp_path.iterdir()) == []


def test_a_live_writer_stays_a_killed_ones_goes(tmp_path):
    artifacts = tmp_path / "artifacts"
    (artifacts / "finetune").mkdir(parents=True)
    writer = ("import sys, time; from modelmake.core.atomic import atomic_dir\n"
              "with atomic_dir(sys.argv[1]) as tmp:\n"
              "    print(tmp, flush=True); time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", writer, str(artifacts / "finetune" / "k")], stdout=subprocess.PIPE,
                            text=True, env=os.environ | {"PYTHONPATH": str(SRC)})
    tmp = Path(proc.stdout.readline().strip())
    said = []
    assert locks.sweep(artifacts, say=lambda p, why: said.append(why)) == [] and tmp.is_dir()
    proc.kill()
    proc.wait()
    assert tmp.is_dir() and owners.owner_path(tmp).exists()  # kill -9: nothing ran on the way out
    assert locks.sweep(artifacts, say=lambda p, why: said.append(why)) == [tmp]
    assert not tmp.exists() and not owners.owner_path(tmp).exists()
    assert said == [f"temporary folder of pid {proc.pid} on {owners.node_name()}: that process has exited (same host)"]


def test_a_reused_pid_is_not_its_old_owner(tmp_path):
    stage = tmp_path / "artifacts" / "quantize"
    folder = plant_folder(stage, ".k.tmp-0001", owners.identity() | {"start": 1, "what": "temporary folder", "beat": 3})
    assert locks.judge_item(folder).dead  # this pid, but a process started at another time
    assert locks.sweep(tmp_path / "artifacts") == [folder]


# --- another host's records: a lease, by this host's clock ---------------------------------------
def test_another_hosts_folder_stays_while_its_counter_moves_and_goes_when_it_stops(tmp_path):
    stage = tmp_path / "artifacts" / "finetune"
    alive = plant_folder(stage, ".a.tmp-0001", foreign("temporary folder"))
    dead = plant_folder(stage, ".b.tmp-0002", foreign("temporary folder", beat=41))
    lock = stage / ".c.lock"
    lock.write_bytes(owners.encode(foreign("lock", beat=7)))
    watch, pending, said = owners.LeaseWatch(), [], {}
    with Beating(owners.owner_path(alive), foreign("temporary folder")):
        # nothing can be proven at once: a flock free proves nothing across hosts
        assert locks.sweep(tmp_path / "artifacts", pending=pending, watch=watch) == []
        assert sorted(pending) == sorted([alive, dead, lock])
        t0 = time.monotonic()
        removed = locks.reap(pending, watch, say=lambda p, why: said.update({p: why}))
        waited = time.monotonic() - t0
    assert sorted(removed) == sorted([dead, lock]) and 1.0 <= waited < 3.0
    assert alive.is_dir() and owners.owner_path(alive).exists()
    assert not dead.exists() and not owners.owner_path(dead).exists() and not lock.exists()
    assert "on elsewhere: another host; its record did not change for 1" in said[dead]


def test_a_record_written_with_a_clock_a_minute_off_is_judged_by_its_counter_alone(tmp_path):
    """Whatever times an owner writes (its clock a minute behind, or ahead), only the counter and
    the reader's own monotonic clock count."""
    stage = tmp_path / "artifacts" / "export"
    behind = foreign("temporary folder", wall=time.time() - 60)
    ahead = foreign("temporary folder", wall=time.time() + 60)
    live = plant_folder(stage, ".a.tmp-0001", behind)
    gone = plant_folder(stage, ".b.tmp-0002", ahead)
    watch, pending = owners.LeaseWatch(), []
    with Beating(owners.owner_path(live), behind):
        locks.sweep(tmp_path / "artifacts", pending=pending, watch=watch)
        assert locks.reap(pending, watch) == [gone]
    assert live.is_dir()


def test_a_folder_without_a_record_is_given_a_lease_not_taken_at_once(tmp_path):
    """An older modelmake's temporary folder (no record): its free flock alone is no proof."""
    stage = tmp_path / "artifacts" / "adapter"
    folder = plant_folder(stage, ".k.tmp-0001", None)
    watch, pending = owners.LeaseWatch(), []
    assert locks.sweep(tmp_path / "artifacts", pending=pending, watch=watch) == [] and pending == [folder]
    assert locks.reap(pending, watch) == [folder]


def test_an_orphan_owner_record_goes_once_its_owner_is_dead(tmp_path):
    stage = tmp_path / "artifacts" / "adapter"
    stage.mkdir(parents=True)
    orphan = stage / f".k.tmp-0001{owners.OWNER_SUFFIX}"  # its folder was renamed into place, then a kill
    orphan.write_bytes(owners.encode(owners.identity() | {"pid": 2**22 + 7, "what": "temporary folder", "beat": 1}))
    assert locks.sweep(tmp_path / "artifacts") == [orphan] and not orphan.exists()


# --- SLURM's word ----------------------------------------------------------------------------------
FAKE_SCONTROL = """#!/bin/sh
if [ "$1 $2" = "show config" ]; then echo "ClusterName             = testcluster"; exit 0; fi
case "$4" in
  11) echo "JobId=11 JobName=x JobState=COMPLETED Reason=None Restarts=0 NodeList=n1 BatchHost=n1";;
  12) echo "JobId=12 JobName=x JobState=RUNNING Reason=None Restarts=0 NodeList=n2 BatchHost=n2";;
  13) echo "JobId=13 JobName=x JobState=RUNNING Reason=None Restarts=1 NodeList=n2 BatchHost=n2";;
  14) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1;;
  15) echo "JobId=15 JobName=x JobState=NODE_FAIL Reason=NodeDown Restarts=0 NodeList=n1 BatchHost=n1";;
  16) echo "JobId=16 JobName=x JobState=COMPLETING Reason=None Restarts=0 NodeList=n1 BatchHost=n1";;
  *) echo "slurm_load_jobs error: Unable to contact slurm controller (connect failure)" >&2; exit 1;;
esac
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "scontrol").write_text(FAKE_SCONTROL)
    (bin_ / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    for var in ("SLURM_JOB_ID", "SLURM_CLUSTER_NAME", "SLURMD_NODENAME"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("job,cluster,restart,state,words", [
    ("11", "testcluster", 0, "dead", "SLURM says the job ended COMPLETED on n1"),
    ("15", "testcluster", 0, "dead", "SLURM says the job ended NODE_FAIL on n1"),
    ("14", "testcluster", 0, "dead", "SLURM no longer knows the job"),
    ("13", "testcluster", 0, "dead", "SLURM restarted the job since (restart 1 > 0)"),
    ("12", "testcluster", 0, "unknown", "SLURM says the job is RUNNING"),
    ("16", "testcluster", 0, "unknown", "SLURM says the job is COMPLETING"),  # its processes may still run
    ("11", "othercluster", 0, "unknown", "another host"),  # a job id of another cluster says nothing here
    ("99", "testcluster", 0, "unknown", "another host"),  # the controller cannot be reached
])
def test_slurm_decides_for_a_recorded_job(fake_slurm, job, cluster, restart, state, words):
    verdict = owners.judge(foreign("lock", slurm_job_id=job, slurm_cluster=cluster, slurm_restart=restart))
    assert (verdict.state, words in verdict.reason) == (state, True), verdict


def test_a_rebooted_node_is_known_from_inside_a_job_on_it(fake_slurm, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    monkeypatch.setenv("SLURM_CLUSTER_NAME", "testcluster")
    monkeypatch.setenv("SLURMD_NODENAME", "n2")
    rec = foreign("temporary folder", node="n2", slurm_job_id="12", slurm_cluster="testcluster", slurm_restart=0)
    assert "has rebooted since" in owners.judge(rec).reason and owners.judge(rec).dead
    assert not owners.judge(rec | {"node": "n3"}).dead  # another node: SLURM says job 12 is running


def test_a_failed_slurm_job_is_explained_by_its_node(fake_slurm):
    assert explain_job("15").startswith("SLURM job 15 ended NODE_FAIL on node n1 (the node was lost")
    assert explain_job("11") == "SLURM job 11 ended COMPLETED on node n1"
    assert explain_job("99") is None
    out = ("Job 3 has been submitted with SLURM jobid 15 (log: /p/logs/slurm/rule_finetune/k/15.log).\n"
           "Error in rule finetune:\n    message: SLURM-job '15' failed due to a node failure, SLURM status is: "
           "'NODE_FAIL'.\n    jobid: 3\n    log: logs/finetune/k.log, /p/logs/slurm/rule_finetune/k/15.log (check log "
           "file(s) for error details)\n    external_jobid: 15\n")
    assert failed_jobs(out) == [("finetune", "logs/finetune/k.log", "15")]
    assert job_logs(out) == {"15": "/p/logs/slurm/rule_finetune/k/15.log"}


# --- the artifact lock ----------------------------------------------------------------------------
def test_a_lock_waits_for_another_hosts_live_owner_then_takes_over_when_its_lease_ends(tmp_path):
    lock = tmp_path / ".k.lock"
    lock.write_bytes(owners.encode(foreign("lock")))
    got = threading.Event()

    def take():
        with locks.exclusive(lock):
            got.set()
            assert owners.decode(lock.read_bytes())["pid"] == os.getpid()

    with Beating(lock, foreign("lock")):
        t = threading.Thread(target=take, daemon=True)
        t.start()
        assert not got.wait(2.0)  # its flock is free (another host's), but its owner is alive
    t0 = time.monotonic()
    assert got.wait(10)  # it stopped: taken over one lease (1 s) later
    assert time.monotonic() - t0 < 5
    t.join(10)
    assert not lock.exists()


def test_a_lock_of_a_dead_process_of_this_host_is_taken_at_once(tmp_path):
    lock = tmp_path / ".k.lock"
    lock.write_bytes(owners.encode(owners.identity() | {"pid": 2**22 + 11, "what": "lock", "beat": 5}))
    t0 = time.monotonic()
    with locks.exclusive(lock):
        assert owners.decode(lock.read_bytes())["pid"] == os.getpid()
    assert time.monotonic() - t0 < 0.5


# --- the stage's watchdog ------------------------------------------------------------------------
WATCHED = "from modelmake.core.lifecycle import die_with_parent; import time; die_with_parent(0.1); time.sleep(1.5)"


@pytest.mark.parametrize("where,dies", [("here", True), ("elsewhere", False)])
def test_the_watchdog_watches_a_parent_pid_of_its_own_host_only(where, dies):
    gone = subprocess.Popen(["true"])
    gone.wait()
    host = owners.host_id() if where == "here" else f"{OTHER_BOOT}/pid:[1]"
    r = subprocess.run([sys.executable, "-c", WATCHED], timeout=60, env=os.environ | {
        "PYTHONPATH": str(SRC), "MODELMAKE_PARENT_PID": str(gone.pid), "MODELMAKE_PARENT_HOST": host})
    assert r.returncode == (128 + signal.SIGTERM if dies else 0)
