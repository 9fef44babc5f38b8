"""The cluster tests' SLURM build, started with the session and run in the background.

A one-node SLURM on this machine (tests/cluster/slurm-up.sh), then the default chain built through
it (`modelmake build --profile slurm`, as a user runs it) in a fresh copy of the project. Most of
that build's wall time is the executor plugin's status polling between jobs (2.8.0 waits 2, 12,
22, ... s between checks while a job runs), so it runs beside the rest of the suite, and the
cluster tests, which run last (conftest), read its result. Its jobs get their own TMPDIR: the
fault tests count the stage scratch folders in this process's.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

from modelmake.faults import start

REPO = Path(__file__).resolve().parents[1]
UP, DOWN = REPO / "tests" / "cluster" / "slurm-up.sh", REPO / "tests" / "cluster" / "slurm-down.sh"
SKIP_EXIT = 3  # slurm-up.sh: cannot start here (not root, no apt-get, a real cluster's config)


class SlurmBuild:
    def __init__(self, state: Path, project: Path):
        self.state, self.project = state, project
        self.skip = self.error = None
        self.proc = self._result = None
        self.log = project.parent / "slurm-build.log"  # (slurm-down.sh removes the state folder)

    def start(self) -> None:
        up = subprocess.run(["bash", str(UP), str(self.state)], capture_output=True, text=True, timeout=900)
        if up.returncode == SKIP_EXIT:
            self.skip = f"SLURM test cluster cannot start here: {up.stderr.strip().splitlines()[-1]}"
            print(self.skip)
            return
        if up.returncode != 0:  # the daemons may be half up: stop() still runs
            self.error = f"slurm-up.sh failed ({up.returncode}):\n{up.stdout}\n{up.stderr[-3000:]}"
            return
        tmp = self.state / "tmp"
        tmp.mkdir()
        self.proc = start(self.project, ["modelmake", "build", "--profile", "slurm"], self.log, env={"TMPDIR": str(tmp)})

    def result(self, timeout: int = 1800) -> SimpleNamespace:
        """The build's exit code and output (stdout and stderr together), once it has finished."""
        if self._result is None:
            rc = self.proc.wait(timeout)
            self._result = SimpleNamespace(returncode=rc, stdout=self.log.read_text(), stderr="")
        return self._result

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:  # the session ended early
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(60)
        if self.skip is None:
            subprocess.run(["bash", str(DOWN), str(self.state)], capture_output=True, text=True, timeout=120)
