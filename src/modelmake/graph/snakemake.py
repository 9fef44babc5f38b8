"""Talking to Snakemake: its executable, Hydra overrides as `--config`, its dry-run job table,
running it with the failing stage's reason printed last."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from modelmake.core.paths import ROOT
from modelmake.graph.cluster import NODE_LOST, explain_job
from modelmake.graph.overrides import OVERRIDES_KEY


def snakemake_exe() -> str:
    """The snakemake of the running environment (the scripts then run in that environment too)."""
    local = Path(sys.executable).parent / "snakemake"
    return str(local) if local.exists() else (shutil.which("snakemake") or "snakemake")


def config_args(overrides) -> list[str]:
    """Hydra overrides as Snakemake `--config` (Snakemake refuses dotted keys; see plan.py)."""
    overrides = list(overrides)
    return ["--config", f"{OVERRIDES_KEY}={json.dumps(overrides)}"] if overrides else []


def snakemake_command(overrides, extra=()) -> list[str]:
    """Snakemake on this project for these Hydra overrides; `extra`: its own arguments and targets.

    `--config` takes every word after it, so it goes last: a target after it would be read as a
    config entry. `--nolock`: two builds that share artifacts run together; each artifact has its
    own lock in the stage runner (stage.run_node), which Snakemake's whole-run lock would forbid."""
    extra = list(extra)
    cmd = [snakemake_exe(), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(ROOT), "--nolock"]
    # a workflow profile (modelmake build --profile) sets its own cores: for cluster jobs too,
    # Snakemake caps each rule's threads at --cores, and "all" would mean the submit host's
    if "--cores" not in extra and "-c" not in extra and "--workflow-profile" not in extra:
        cmd += ["--cores", "all"]
    return cmd + extra + config_args(overrides)


def failures(output: str) -> list[tuple[str, str | None]]:
    """(rule, log path) of each failed job in Snakemake's output."""
    return [(rule, log) for rule, log, _ in failed_jobs(output)]


def failed_jobs(output: str) -> list[tuple[str, str | None, str | None]]:
    """(rule, the stage's log path, its SLURM job id or None) of each failed job in Snakemake's
    output. A SLURM job's block lists the stage log first, then the job log."""
    found = []
    for block in re.split(r"^(?=Error in rule )", output, flags=re.M)[1:]:
        rule = re.match(r"Error in rule (\w+):", block).group(1)
        log = re.search(r"^\s+log: (.+?)(?: \(check log file|$)", block, flags=re.M)
        first = log.group(1).split(", ")[0].strip() if log else None
        job = re.search(r"^\s+external_jobid: (\d+)|SLURM-job '(\d+)'", block, flags=re.M)
        found.append((rule, first, next((g for g in job.groups() if g), None) if job else None))
    return found


def job_logs(output: str) -> dict[str, str]:
    """SLURM job id -> its job log, from the executor's submission lines."""
    return dict(re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.", output))


def reason(log: Path, max_lines: int = 6) -> str:
    """A stage's refusal from its log: the `modelmake: error:` line (and what it lists), else the
    last line (an exception's message)."""
    try:
        lines = log.read_text(errors="replace").rstrip().splitlines()
    except OSError:
        return f"(no log at {log})"
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("modelmake: error: "):
            return "\n".join([lines[i][len("modelmake: error: "):], *lines[i + 1:i + max_lines]])
    # an unexpected exception: its traceback's last line (Hydra prints a hint after it)
    for line in reversed(lines):
        if EXCEPTION_LINE.match(line):
            return line
    return lines[-1] if lines else "(empty log)"


EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")


# Snakemake's words for an update()-flagged output that did not exist before its job failed:
# nothing to restore, nothing lost (every artifact is renamed into place whole)
NOISE = re.compile(r"^Cannot restore .*: no backup found\.$")
STOP_GRACE_S = 60  # after a stop is forwarded, how long Snakemake may take to end its jobs


def run_snakemake(cmd: list[str], cwd: Path = ROOT) -> int:
    """Run Snakemake, passing its output through; on failure end with each failed stage's reason
    and log path, so the cause is the last thing printed, not buried in Snakemake's error block.

    SIGTERM, SIGINT or SIGHUP to this process is forwarded to Snakemake as SIGTERM, which ends its
    running stages (the Snakefile's onstart: lifecycle.stop_children_on_signal); should it not be
    gone STOP_GRACE_S later, it is killed, and its stages die with it (their watchdog)."""
    proc = subprocess.Popen(cmd, cwd=cwd, stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1)
    stopped: list[int] = []

    def stop(signum, frame):
        if not stopped:
            stopped.append(signum)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            timer = threading.Timer(STOP_GRACE_S, lambda: proc.poll() is None and proc.kill())
            timer.daemon = True
            timer.start()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    seen = []
    try:
        for line in proc.stderr:
            if not NOISE.match(line.rstrip("\n")):
                sys.stderr.write(line)
            seen.append(line)
        rc = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopped:
        name = signal.Signals(stopped[0]).name
        print(f"modelmake: stopped by {name}: the running stages were ended and their temporary folders "
              "removed; the same command resumes the build", file=sys.stderr)
        return 128 + stopped[0]
    if rc != 0:
        out = "".join(seen)
        logs = job_logs(out)
        for rule, log, job in failed_jobs(out):
            why = reason(Path(cwd) / log) if log else "(no log)"
            where = explain_job(job) if job else None
            if where and any(s in where for s in NODE_LOST):
                why = where  # the stage was killed with its node: its log stops mid-way
            elif where:
                why = f"{why} [{where}]"
            lines = [f"modelmake: {rule} failed: {why}"]
            if log:
                lines.append(f"  log: {log}")
            if job and job in logs:
                lines.append(f"  job log: {logs[job]}")
            print("\n".join(lines), file=sys.stderr)
    return rc


def parse_jobs(output: str) -> dict[str, int]:
    """Jobs per rule from Snakemake's output (`Job stats:` table); {} when nothing is to be done."""
    if "Nothing to be done" in output or "Job stats:" not in output:
        return {}
    table = output.split("Job stats:", 1)[1]
    jobs = {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)}
    return {k: v for k, v in jobs.items() if k not in ("total", "all")}
