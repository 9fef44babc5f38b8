"""The two-node SLURM test cluster (tests/cluster/*.sh) from Python: start and stop it, run a
command inside a node, kill a node and start it again, and read SLURM's own record of a job.
Used by tests/test_cluster.py and bench/cluster.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "tests" / "cluster"
SKIP_EXIT = 3  # slurm-up.sh: cannot start here (not root, no apt-get, no namespaces)
# each node has its own /tmp: what the nodes share (state, projects) lives outside it
STATE_PARENT = Path(os.environ.get("MODELMAKE_CLUSTER_DIR", "/var/tmp"))
NODES = ("n1", "n2")
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")
# the test nodes have one CPU each: stages that ask for two get one (resources are in no key)
ONE_CPU = ("--max-threads", "1")


class ClusterUnavailable(Exception):
    """slurm-up.sh could not start a cluster here (its last line says why)."""


@dataclass
class Cluster:
    state: Path

    @property
    def conf(self) -> Path:
        return self.state / "etc" / "slurm.conf"

    @property
    def env(self) -> dict:
        """What a command needs to talk to this cluster (and no other SLURM on the machine)."""
        return {"SLURM_CONF": str(self.conf)}

    @property
    def shared(self) -> Path:
        """A folder every node sees at the same path (this machine's disk: the shared filesystem)."""
        return self.state / "shared"

    @classmethod
    def up(cls) -> Cluster:
        STATE_PARENT.mkdir(parents=True, exist_ok=True)
        state = Path(tempfile.mkdtemp(prefix="modelmake-slurm-", dir=STATE_PARENT))
        r = subprocess.run(["bash", str(SCRIPTS / "slurm-up.sh"), str(state)], capture_output=True, text=True,
                           timeout=900)
        cluster = cls(state)
        if r.returncode == SKIP_EXIT:
            shutil.rmtree(state, ignore_errors=True)
            raise ClusterUnavailable(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "slurm-up.sh: exit 3")
        if r.returncode != 0:
            cluster.down()
            raise RuntimeError(f"slurm-up.sh failed ({r.returncode}):\n{r.stdout}\n{r.stderr[-3000:]}")
        return cluster

    def down(self) -> None:
        subprocess.run(["bash", str(SCRIPTS / "slurm-down.sh"), str(self.state)], capture_output=True, text=True,
                       timeout=180)
        shutil.rmtree(self.state, ignore_errors=True)

    # --- commands ------------------------------------------------------------------------------
    def slurm(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=os.environ | self.env)

    def init_pid(self, node: str) -> int:
        return int((self.state / "nodes" / node / "init.pid").read_text())

    def on(self, node: str, args: list[str], cwd: Path | None = None, env: dict | None = None, **kw):
        """Popen `args` inside `node` (its mount, UTS and PID namespaces), as a process of that host."""
        cmd = ["nsenter", "-t", str(self.init_pid(node)), "--mount", "--uts", "--pid", "--"]
        if cwd is not None:
            cmd += ["env", "-C", str(cwd)]
        return subprocess.Popen(cmd + list(args), env=os.environ | self.env | (env or {}), **kw)

    def run_on(self, node: str, args: list[str], cwd: Path | None = None, env: dict | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
        p = self.on(node, args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = p.communicate(timeout=timeout)
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)

    def boot_id(self, node: str) -> str:
        return (self.state / "nodes" / node / "boot_id").read_text().strip()

    def node_tmp(self, node: str) -> Path:
        """What the node sees as /tmp, seen from this host."""
        return self.state / "nodes" / node / "tmp"

    def kill(self, node: str) -> None:
        """A node loss: its slurmd, slurmstepd and every job process die at once (its PID namespace)."""
        r = subprocess.run(["bash", str(SCRIPTS / "node-kill.sh"), node, str(self.state)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr

    def start(self, node: str, wait_idle: float = 60) -> None:
        """(Re)boot a node: a new boot id, an empty /tmp; back in the partition (ReturnToService=2)."""
        r = subprocess.run(["bash", str(SCRIPTS / "node-start.sh"), node, str(self.state)], capture_output=True,
                           text=True, timeout=120, env=os.environ | self.env)
        assert r.returncode == 0, r.stderr
        t0 = time.monotonic()
        while self.node_state(node) != "idle":
            if time.monotonic() - t0 > wait_idle:
                raise RuntimeError(f"{node} did not come back: {self.node_state(node)}")
            time.sleep(0.5)

    def node_state(self, node: str) -> str:
        return self.slurm("sinfo", "-h", "-N", "-n", node, "-o", "%t").stdout.strip()

    def job(self, job_id: str) -> dict:
        """SLURM's own record of a job (scontrol show job): JobState, NodeList, BatchHost, ..."""
        r = self.slurm("scontrol", "show", "job", "-o", str(job_id))
        assert r.returncode == 0, r.stderr
        return dict(kv.split("=", 1) for kv in r.stdout.split() if "=" in kv)

    def jobs_running(self) -> list[tuple[str, str, str]]:
        """(job id, job name, node list) of the running jobs."""
        r = self.slurm("squeue", "-h", "-t", "RUNNING", "-o", "%i %j %N")
        return [tuple(line.split()) for line in r.stdout.splitlines() if len(line.split()) == 3]


def submitted(output: str) -> list[tuple[str, Path]]:
    """(SLURM job id, job log) of every sbatch a Snakemake run made, from its output."""
    return [(j, Path(log)) for j, log in SUBMITTED.findall(output)]
