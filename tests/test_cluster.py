"""The build graph on a real two-node SLURM cluster on this machine (tests/cluster/slurm-up.sh:
slurmctld, and slurmd n1 and n2 with one CPU each, each node in its own mount, UTS and PID
namespaces: its own hostname, /tmp and boot id). Jobs go through profiles/slurm exactly as a user
sends them (`modelmake build --profile slurm`); the projects live on the "shared filesystem" (this
machine's disk, outside /tmp, which each node has its own of).

- a 2-point LoRA sweep from nothing spreads over both nodes (SLURM's own record and the build
  journal name them), builds each artifact once, and equals a local build;
- a second run submits nothing, a further sweep sends no quantize or export job, bad resources are
  refused with SLURM's words;
- the multi-host hazard: two bindfs mounts of one folder, whose flocks do not reach each other, a
  live temporary folder on n1 while a build starts on n2 (its clock a minute off n1's): nothing live
  is removed; once n1 is gone, its folder goes when its lease expires;
- a node lost mid-finetune: the build ends naming the node and the job log; a plain rerun (on the
  partition's one node left) finishes with nothing lost and no temporary folder left, past a stale
  lock of a host that no longer exists.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from helpers.cluster import NODES, ONE_CPU, Cluster, ClusterUnavailable, submitted
from helpers.faults import journal, leftovers, temporaries, wait_for
from helpers.folders import max_relative_diff
from helpers.project import copy_project, nodes, run
from modelmake.core import owners
from modelmake.graph.snakemake import config_args, parse_jobs, snakemake_exe
from modelmake.recipe import RECIPE, build_plan

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ALL_STAGES = [s.name for s in RECIPE.stages if s.when is None]  # the default chain's (merged: when asked)
SWEEP = ("lora.r=4,8",)  # two points: two fine-tunes on one quantize and export
# files whose bytes carry times; the ORT-genai builder stamps model.onnx's producer_version per run
TIMED = {"metrics.json", "builder.log", "train_log.csv", "receipt.json"}
# equal byte for byte; the trained ones are equal up to float rounding: the test nodes have one CPU,
# the local build two threads, and torch's CPU reductions round by thread count (threads are in no key)
EXACT = {"base", "dataset", "quantize", "export"}
TRAINED = {"finetune", "adapter"}
LEASE_S = "6"  # the builds' lease here (default 60 s): a stale record is given up on within seconds


@pytest.fixture(scope="session")
def slurm():
    """slurmctld + n1 + n2 (+ their munged), stopped at the end of the session even when a test
    fails: daemons, namespaces and their mounts gone, the state folder removed."""
    try:
        cluster = Cluster.up()
    except ClusterUnavailable as e:
        print(f"SLURM test cluster cannot start here: {e}")
        pytest.skip(f"SLURM test cluster cannot start here: {e}")
    try:
        yield cluster
    finally:
        cluster.down()


def modelmake_build(cluster: Cluster, project: Path, *args: str, snakemake_args: tuple = (),
                    env: dict | None = None, verbose: bool = True) -> subprocess.CompletedProcess:
    """`modelmake build --profile slurm ...` as the README tells a user (the venv's entry point,
    importing this copy's modelmake), for the test cluster's one-CPU nodes; `verbose`: Snakemake's
    whole output (its submission lines name the SLURM jobs), else the build's view a user sees."""
    view = ("--verbose",) if verbose else ()
    return run(project, "modelmake", "build", *view, "--profile", "slurm", *args, "--", *ONE_CPU, *snakemake_args,
               timeout=1200, env=cluster.env | (env or {}))


def slurm_dry_run(cluster: Cluster, project: Path, *overrides: str) -> dict[str, int]:
    r = run(project, snakemake_exe(), "-n", "--workflow-profile", "profiles/slurm", *config_args(overrides),
            env=cluster.env)
    assert r.returncode == 0, r.stderr[-3000:]
    return parse_jobs(r.stdout + r.stderr)


@pytest.fixture(scope="session")
def slurm_built(slurm, tmp_path_factory):
    """A 2-point LoRA sweep built through SLURM from nothing, in a fresh copy on the shared folder."""
    dst = copy_project(slurm.shared / "sweep")
    t0 = time.monotonic()
    r = modelmake_build(slurm, dst, *SWEEP)
    assert r.returncode == 0, f"SLURM sweep failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    print(f"two-node sweep {SWEEP}: {time.monotonic() - t0:.1f} s, {len(submitted(r.stdout + r.stderr))} jobs")
    return dst, r


def sweep_nodes(project: Path) -> list[dict]:
    """Every node of the sweep's plan (each artifact once), with paths inside `project`."""
    plan = build_plan(overrides=list(SWEEP))
    return [{"stage": n.stage, "key": n.key, "path": project / n.path} for n in plan.nodes.values()]


# --- the sweep over both nodes ---------------------------------------------------------------------
def test_the_sweep_ran_every_stage_as_a_job_on_both_nodes(slurm, slurm_built):
    project, r = slurm_built
    out = r.stdout + r.stderr
    jobs = submitted(out)
    plan = sweep_nodes(project)
    assert len(jobs) == len(plan), out[-3000:]  # one job per artifact: nothing submitted twice
    assert "SLURM job states checked at least every 1 s" in r.stderr, r.stderr[:3000]
    per_stage = Counter()
    ran_on = {}
    for jobid, log in jobs:
        stage = log.parent.parent.name.removeprefix("rule_")
        per_stage[stage] += 1
        text = log.read_text()
        assert f"rule {stage}:" in text and "1 of 1 steps (100%) done" in text, text[-2000:]
        record = slurm.job(jobid)  # SLURM's own record of where the job ran
        assert record["JobState"] == "COMPLETED", record
        ran_on[jobid] = record["NodeList"]
    assert per_stage == Counter(n["stage"] for n in plan), per_stage
    # a LoRA sweep shares its base, dataset, quantize and export
    assert per_stage["quantize"] == per_stage["export"] == 1 and per_stage["finetune"] == 2
    assert set(ran_on.values()) == set(NODES), ran_on
    # the build journal says the same, from inside each job: SLURMD_NODENAME and SLURM_JOB_ID
    entries = journal(project)
    assert {e["slurm_job_id"]: e["node"] for e in entries} == ran_on
    boots = {e["node"]: e["boot_id"] for e in entries}
    assert boots == {n: slurm.boot_id(n) for n in NODES}  # each node's own boot id, not this host's
    assert owners.boot_id() not in boots.values()


def test_each_artifact_built_once_and_equal_to_a_local_build(slurm_built, project):
    """Keys are the plan's (where a job ran enters no key); the default point's artifacts hold the
    same files as the session's local build: byte for byte (timings and stamps aside), the trained
    weights to float rounding (one thread per job here, two there)."""
    built, _ = slurm_built
    entries = journal(built)
    counts = Counter((e["stage"], e["key"]) for e in entries)
    plan = sweep_nodes(built)
    assert counts == Counter((n["stage"], n["key"]) for n in plan), counts  # each exactly once
    for n in plan:
        assert (n["path"] / "manifest.json").exists(), n
    assert not leftovers(built), leftovers(built)
    local_point = nodes(project)
    for stage, node in nodes(built).items():
        a = json.loads(node.manifest.read_text())
        b = json.loads(local_point[stage].manifest.read_text())
        assert (a["key"], a["inputs"], a["config"], a["data"]) == (b["key"], b["inputs"], b["config"], b["data"])
        if stage in EXACT:
            def same(files):
                return {k: v for k, v in files.items() if Path(k).name not in TIMED and k != "model/model.onnx"}
            assert same(a["files"]) == same(b["files"]), stage
        elif stage in TRAINED:  # trained with one thread here, two there: equal up to float rounding
            assert set(a["files"]) == set(b["files"]), stage
            assert max_relative_diff(stage, node.path, local_point[stage].path) < 1e-4, stage


def test_second_slurm_run_submits_nothing(slurm, slurm_built):
    project, _ = slurm_built
    r = modelmake_build(slurm, project, *SWEEP)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert submitted(out) == []
    assert "Nothing to be done" in out or "nothing to build: every artifact is current" in out


def test_lora_sweep_submits_no_quantize_or_export(slurm, slurm_built):
    project, _ = slurm_built
    jobs = slurm_dry_run(slurm, project, "lora.r=3,5")
    assert "quantize" not in jobs and "export" not in jobs and "base" not in jobs, jobs
    assert jobs["finetune"] == 2 and jobs["adapter"] == 2, jobs


# --- refusals --------------------------------------------------------------------------------------
def refused(cluster: Cluster, project: Path, *args: str, over: tuple = ()) -> str:
    """A fine-tune sent with a bad resource: it must fail with the scheduler's reason, name the
    job's log, and leave no artifact that counts as done."""
    point = ("lora.r=7", *over)
    ft = nodes(project, "lora.r=7")["finetune"]
    r = modelmake_build(cluster, project, *point, snakemake_args=("--until", "finetune", *args), verbose=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-3000:]
    assert f"logs/finetune/{ft.key}.log" in out, out[-3000:]
    assert not ft.manifest.exists() and not (ft.path.exists() and any(ft.path.iterdir()))
    # nothing half-written is taken as done afterwards: a dry run still wants the fine-tune
    assert slurm_dry_run(cluster, project, "lora.r=7").get("finetune") == 1
    return out


def test_unknown_partition_is_refused(slurm, slurm_built):
    project, _ = slurm_built
    out = refused(slurm, project, "--set-resources", "finetune:slurm_partition=no_such_partition")
    assert "SLURM sbatch failed" in out and "invalid partition specified: no_such_partition" in out, out[-3000:]


def test_gpu_on_a_cluster_without_gpus_is_refused(slurm, slurm_built):
    project, _ = slurm_built
    # the cpu_small group with one GPU for the fine-tune: the test cluster has no GRES at all
    out = refused(slurm, project, over=("resources.stages.finetune.gpu=1",))
    assert "--gpus=1" in out and "Invalid generic resource (gres) specification" in out, out[-3000:]


# --- the multi-host hazard: locks that do not cross nodes --------------------------------------------
WRITER = """
import os, sys, time
from pathlib import Path
from modelmake.core.atomic import atomic_dir
from modelmake.core.locks import recover
os.chdir(sys.argv[1])
recover(Path(".snakemake"), Path("artifacts"))  # as a live build: holds the project lock (shared)
with atomic_dir(Path("artifacts/finetune") / sys.argv[2]) as tmp:
    (tmp / "half.bin").write_bytes(b"x" * 1000)
    print(Path(sys.argv[1]) / tmp, flush=True)
    for _ in range(1200):  # until told to finish (at most 2 minutes)
        if Path(sys.argv[3]).exists():
            break
        time.sleep(0.1)
    (tmp / "manifest.json").write_text("{}")
print("finished", flush=True)
"""

READER = """
import json, os, sys
from pathlib import Path
from modelmake.core import locks, owners
said = []
say = lambda p, why: said.append(f"{p}: {why}")
watch, pending = owners.LeaseWatch(), []
removed = locks.sweep(Path(sys.argv[1]) / "artifacts", say=say, pending=pending, watch=watch)
removed += locks.reap(pending, watch, say=say)
print(json.dumps({"removed": [str(p) for p in removed], "said": said, "pending": [str(p) for p in pending]}))
"""

FLOCK_FREE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("free")
except OSError:
    print("held")
"""


@contextlib.contextmanager
def lockless_mounts(cluster: Cluster):
    """One folder mounted by bindfs (FUSE, no lock forwarding) at the same path in n1 and in n2:
    both see the same files, but an flock taken through one mount is invisible through the other
    (unlike two bind mounts, which share the inode and so the lock)."""
    src, mnt = cluster.shared / "lockless-src", cluster.shared / "lockless"
    src.mkdir()
    mnt.mkdir()
    try:
        for node in NODES:
            r = cluster.run_on(node, ["bindfs", "--no-allow-other", str(src), str(mnt)], timeout=30)
            assert r.returncode == 0, r.stderr
        yield src, mnt
    finally:
        for node in NODES:  # a node killed meanwhile took its mount with it
            with contextlib.suppress(Exception):
                cluster.run_on(node, ["umount", str(mnt)], timeout=30)


def clock_off(offset: str) -> dict:
    """The environment that runs a process (and its children) with its clocks `offset` off this
    machine's (libfaketime, e.g. "-60s"); the `faketime` wrapper itself is not used: its semaphore
    names are pids, which repeat across the nodes' PID namespaces."""
    lib = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1")) + sorted(Path("/usr/lib").glob(
        "faketime/libfaketime.so.1"))
    assert lib, "libfaketime is not installed (Debian package faketime; slurm-up.sh installs it)"
    return {"LD_PRELOAD": str(lib[0]), "FAKETIME": offset}  # the monotonic clock too: nothing compares it across hosts


def py_on(cluster: Cluster, node: str, script: str, *args: str, env: dict | None = None, clock: str | None = None,
          project: Path | None = None, **kw):
    """Popen python running `script` in `node`, importing this checkout's modelmake; `clock`: a
    libfaketime offset (e.g. "-60s") for that process's clocks."""
    cmd = [sys.executable, "-c", script, *args]
    src = str((project or Path(__file__).resolve().parents[1]) / "src")
    return cluster.on(node, cmd, env={"PYTHONPATH": src} | (clock_off(clock) if clock else {}) | (env or {}), **kw)


def test_a_live_folder_on_n1_survives_a_build_starting_on_n2_whose_locks_do_not_reach_it(slurm):
    """Fails on the single-host recovery (flock free = owner dead): it removed the live folder."""
    try:
        hazard(slurm)
    finally:
        if not (slurm.state / "nodes" / "n1" / "init.pid").exists():
            slurm.start("n1")  # a reboot: the cluster is whole again for the tests after


def hazard(slurm: Cluster) -> None:
    with lockless_mounts(slurm) as (src, mnt):
        proj = copy_project(src / "p")
        seen = mnt / "p"  # the project as both nodes see it (each through its own mount)
        go = src / "go"
        env = {owners.LEASE_ENV: "2"}
        # a live build on n1, its clock a minute behind n2's
        writer = py_on(slurm, "n1", WRITER, str(seen), "abcdef012345", str(mnt / "go"), env=env, clock="-60s",
                       project=proj, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            tmp_seen = Path(writer.stdout.readline().strip())
            assert tmp_seen.name.startswith(".abcdef012345.tmp-"), writer.stderr.read()
            tmp = src / "p" / tmp_seen.relative_to(seen)
            record = owners.decode(owners.read_raw(owners.owner_path(tmp)))
            assert record["node"] == "n1" and record["boot_id"] == slurm.boot_id("n1"), record
            # the fault is real: from n2, neither the folder's flock nor the project lock is held
            for path in (tmp_seen, seen / ".snakemake" / "modelmake.lock"):
                r = py_on(slurm, "n2", FLOCK_FREE, str(path), stdout=subprocess.PIPE, text=True)
                assert r.communicate(timeout=60)[0].strip() == "free", path
            # a build starts on n2 (Snakemake loads the workflow: recovery), clock a minute ahead
            r = slurm.run_on("n2", [snakemake_exe(), "-n", "--cores", "1"], cwd=seen,
                             env={"PYTHONPATH": str(seen / "src")} | clock_off("+60s") | env, timeout=300)
            assert r.returncode == 0, r.stderr[-3000:]
            assert tmp.is_dir() and "removed" not in r.stderr, r.stderr[-3000:]
            # and one that watches it for whole leases (2 s by n2's clock): its heartbeat moves
            r = py_on(slurm, "n2", READER, str(seen), env=env, clock="+60s", project=proj, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True)
            out, err = r.communicate(timeout=120)
            assert r.returncode == 0, err
            result = json.loads(out)
            assert result["removed"] == [] and tmp.is_dir() and (tmp / "half.bin").exists(), result
            assert str(tmp_seen) in result["pending"], result  # in doubt, watched, left alone
            # the writer finishes its artifact, whole
            go.touch()
            assert writer.stdout.readline().strip() == "finished", writer.stderr.read()
            assert writer.wait(60) == 0
            assert (src / "p" / "artifacts" / "finetune" / "abcdef012345" / "half.bin").exists()
            assert not temporaries(src / "p", "finetune")
            assert not list((src / "p" / "artifacts" / "finetune").glob(".*"))  # its owner record went too

            # n1 is lost while it writes another: the folder is left, a host that no longer exists owns it
            writer = py_on(slurm, "n1", WRITER, str(seen), "0123456789ab", str(mnt / "never"), env=env, project=proj,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            tmp_seen = Path(writer.stdout.readline().strip())
            tmp = src / "p" / tmp_seen.relative_to(seen)
            slurm.kill("n1")
            writer.wait(30)
            assert tmp.is_dir()
            r = py_on(slurm, "n2", READER, str(seen), env=env, project=proj, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True)
            out, err = r.communicate(timeout=120)
            result = json.loads(out)
            assert result["removed"] == [str(tmp_seen)] and not tmp.exists(), (result, err)
            assert "on n1" in result["said"][0] and "did not change" in result["said"][0], result
            assert not owners.owner_path(tmp).exists()
        finally:
            if writer.poll() is None:
                writer.kill()
            writer.wait(30)


# --- a node lost mid-job --------------------------------------------------------------------------
GHOST_BOOT = "00000000-0000-4000-8000-00000000dead"


def ghost_record(what: str, job: str | None = None) -> bytes:
    """The owner record of a host that no longer exists (never heartbeats again)."""
    return owners.encode({"node": "n9", "host": "n9", "boot_id": GHOST_BOOT, "pidns": "pid:[1]", "pid": 4242,
                          "start": 1, "slurm_job_id": job, "slurm_cluster": "modelmake-test" if job else None,
                          "slurm_restart": 0 if job else None, "what": what, "beat": 17})


def test_a_node_lost_mid_finetune_then_a_plain_rerun_finishes(slurm, slurm_built):
    """Kill the node running a fine-tune (its slurmd, slurmstepd and the stage, at once): the build
    fails naming the node and the job log; a plain rerun, with that node still down, finishes on
    the other, past a stale lock and a temporary folder of a host that no longer exists: nothing
    lost, nothing built twice, no temporary folder left."""
    built, _ = slurm_built
    p = copy_project(slurm.shared / "nodeloss", built=built)
    point = ("lora.r=6", "train.steps=150")
    until = ("--until", "adapter")
    env = {owners.LEASE_ENV: LEASE_S}
    n = nodes(p, *point)
    before = {d: (d / "manifest.json").read_bytes() for d in (p / "artifacts").glob("*/*")
              if d.is_dir() and not d.name.startswith(".")}
    log = p / "first.log"
    with open(log, "w") as f:
        first = subprocess.Popen(["modelmake", "build", "--verbose", "--profile", "slurm", *point, "--", *ONE_CPU,
                                  *until],
                                 cwd=p, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                 env=os.environ | {"PYTHONPATH": str(p / "src"),
                                                   "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
                                 | slurm.env | env)
    lost = None
    try:
        # mid-finetune: its temporary folder exists (the model loads, then 150 steps train: ~15 s)
        wait_for(lambda: temporaries(p, "finetune"), 600, "finetune to start", first, poll=0.2)
        time.sleep(4)
        running = [j for j in slurm.jobs_running() if j[2] in NODES]
        assert len(running) == 1, running
        job, _, lost = running[0]
        slurm.kill(lost)
        assert temporaries(p, "finetune") and not n["finetune"].manifest.exists()  # killed mid-way
        rc = first.wait(300)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, 9)
            first.wait(30)
    out = log.read_text()
    assert rc != 0
    job_log = f"logs/slurm/rule_finetune/{n['finetune'].key}/{job}.log"
    said = [line for line in out.splitlines() if line.startswith("modelmake: finetune failed")]
    assert said and f"node {lost}" in said[0] and "NODE_FAIL" in said[0], out[-3000:]
    assert job_log in out and f"logs/finetune/{n['finetune'].key}.log" in out, out[-3000:]
    assert temporaries(p, "finetune") and not n["finetune"].manifest.exists()  # left behind, not counted as built
    assert slurm.node_state(lost).startswith("down")

    # a host that no longer exists left a lock and two temporary folders (one named a SLURM job)
    ghost_lock = n["adapter"].path.parent / f".{n['adapter'].key}.lock"
    ghost_lock.parent.mkdir(parents=True, exist_ok=True)
    ghost_lock.write_bytes(ghost_record("lock"))
    ghosts = []
    for name, job_id in (("ghost0000", None), ("ghost0001", "999999")):
        t = n["finetune"].path.parent / f".{n['finetune'].key}.tmp-{name}"
        t.mkdir()
        owners.owner_path(t).write_bytes(ghost_record("temporary folder", job_id))
        ghosts.append(t)

    try:
        r = modelmake_build(slurm, p, *point, snakemake_args=until, env=env)
        out2 = r.stdout + r.stderr
        assert r.returncode == 0, out2[-5000:]
        jobs = submitted(out2)
        assert {slurm.job(j)["NodeList"] for j, _ in jobs} == set(NODES) - {lost}  # the partition's one node left
        assert "SLURM says the job ended NODE_FAIL" in out2, out2[-3000:]  # the lost job's folder and lock
        assert "SLURM no longer knows the job" in out2, out2[-3000:]
        assert n["finetune"].manifest.exists() and n["adapter"].manifest.exists()
        # nothing lost: every artifact built before is there, unchanged, and nothing was built twice
        assert all((d / "manifest.json").read_bytes() == m for d, m in before.items())
        new = [(e["stage"], e["key"]) for e in journal(p)]  # (the copy's journal starts empty)
        assert sorted(new) == sorted([("finetune", n["finetune"].key), ("adapter", n["adapter"].key)]), new
        assert not leftovers(p), leftovers(p)  # no temporary folder, no lock file, no owner record
        assert not ghost_lock.exists() and not any(g.exists() for g in ghosts)
    finally:
        slurm.start(lost)
