"""Talking to Snakemake: its executable, Hydra overrides as `--config`, its dry-run job table,
running it with the failing stage's reason printed last."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from modelmake.core import journal
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


# a scheduler refusing a job (the SLURM executor's words): the stage's log is then empty
SUBMIT_FAILED = re.compile(r"sbatch failed|sbatch: error|submission failed", re.I)


def submit_failure(lines: list[str]) -> str | None:
    """The scheduler's refusal of a job from Snakemake's output: the executor's message (which
    may run over lines) and the submission's options (what was asked: a partition, GPUs), without
    the command it wraps."""
    at = [i for i, x in enumerate(lines) if SUBMIT_FAILED.search(x)]
    if not at:
        return None
    i = at[-1]
    while i > 0 and SUBMIT_FAILED.search(lines[i - 1]):  # the message's first line
        i -= 1
    said, k = [], i
    while k < len(lines) and k < i + 4 and lines[k].strip() and not lines[k].strip().endswith("call:"):
        said.append(lines[k].strip().removeprefix("message: "))
        k += 1
    out = [" ".join(said)]
    if k + 1 < len(lines) and lines[k].strip().endswith("call:"):
        out.append(f"  {lines[k].strip()} {lines[k + 1].strip().split(' --wrap', 1)[0]}")
    return "\n".join(out)


EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")


# Snakemake's words for an update()-flagged output that did not exist before its job failed:
# nothing to restore, nothing lost (every artifact is renamed into place whole)
NOISE = re.compile(r"^Cannot restore .*: no backup found\.$")
STOP_GRACE_S = 60  # after a stop is forwarded, how long Snakemake may take to end its jobs
_RULE = re.compile(r"^(?:local)?rule (\w+):$")
_KEY = re.compile(r"^\s+wildcards: key=([0-9a-f]{12})")
_JOBID = re.compile(r"^\s+jobid: (\d+)$")
_FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)")
_PASS = re.compile(r"^(report: |modelmake: (?!error: ))")  # a stage's own error comes last, once
_TOTAL = re.compile(r"^total\s+(\d+)$")
_ALL_ROW = re.compile(r"^all\s+1$")  # the job table's row of `rule all` (absent when targets are named)
_SNAKEMAKE_END = re.compile(r"^(Complete log\(s\)|Elapsed time|\d+ of \d+ steps)")


class QuietView:
    """The terminal view of a build: one line as each stage starts and ends, its own progress while
    it runs (from its log's progress bar) and the time left (learned from this machine's earlier
    builds: graph.progress). Snakemake's whole output goes to a log file; its error blocks are not
    shown (the failing stage's reason and log path end the output instead)."""

    def __init__(self, cwd: Path, pending: list[tuple[str, str, float | None]], out=sys.stderr, every_s: float = 2.0,
                 cached: int = 0):
        from modelmake.graph.progress import human

        self.cwd, self.out, self.every_s, self.human = Path(cwd), out, every_s, human
        self.estimates = {(stage, key): est for stage, key, est in pending}
        self.total = len(pending)
        self.done = 0
        self.jobs: dict[str, dict] = {}     # jobid -> {"stage", "key", "t0", "shown"}
        self._block: dict = {}
        self._counts_all = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.t0 = time.monotonic()
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        self.tail = False
        self.tty = getattr(out, "isatty", lambda: False)()
        left = self._left()
        names = ", ".join(sorted({stage for stage, _, _ in pending}, key=[s for s, _, _ in pending].index))
        held = f"; {cached} held by the shared cache (pulled where a target reads them)" if cached else ""
        self._say(f"modelmake: {self.total} artifact(s) to build ({names})" + (f", about {human(left)}" if left
                  else "") + held if self.total else "modelmake: nothing to build: every artifact is current" + held)

    def _say(self, text: str) -> None:
        with self._lock:
            self.out.write(("\r\x1b[K" if self.tty else "") + text + "\n")
            self.out.flush()

    def _left(self) -> float | None:
        ests = [e for k, e in self.estimates.items()]
        known = [e for e in ests if e is not None]
        return sum(known) if known else None

    def line(self, line: str) -> None:
        text = line.rstrip("\n")
        if _ALL_ROW.match(text):
            self._counts_all = True
        elif m := _TOTAL.match(text):  # Snakemake's own count of the jobs it will run (less `all`)
            self.total = max(0, int(m.group(1)) - self._counts_all)
        elif m := _RULE.match(text):
            self._block = {"stage": m.group(1)}
        elif (m := _JOBID.match(text)) and self._block:
            self._block["jobid"] = m.group(1)
        elif (m := _KEY.match(text)) and self._block.get("jobid"):
            stage, key = self._block["stage"], m.group(1)
            self.jobs[self._block["jobid"]] = {"stage": stage, "key": key, "t0": time.monotonic(), "shown": -1.0}
            est = self.estimates.get((stage, key))
            self._say(f"[{self.done + 1:>2}/{self.total}] {stage:<9} {key}  started"
                      + (f" (about {self.human(est)})" if est else ""))
            self._block = {}
        elif m := _FINISHED.match(text):
            job = self.jobs.pop(m.group(1), None)
            if job:
                self.done += 1
                self.estimates.pop((job["stage"], job["key"]), None)
                left = self._left() if self.done < self.total else None
                took = self.human(time.monotonic() - job["t0"])
                pulled = journal.latest(job["stage"], job["key"], self.cwd, action="pull")
                how = (f"pulled from the cache in {took} ({pulled['bytes'] / 1e6:.1f} MB, verified)"
                       if pulled and pulled.get("pid") and pulled["started"] >= self.started else f"done in {took}")
                self._say(f"[{self.done:>2}/{self.total}] {job['stage']:<9} {job['key']}  {how}"
                          + (f", about {self.human(left)} left" if left else ""))
        elif text.startswith("=== generation"):
            self.tail = True  # the Snakefile's onsuccess: the generations and the report, shown whole
            self._say("")
            self._say(text)
        elif self.tail and not _SNAKEMAKE_END.match(text):
            self._say(text)
        elif _PASS.match(text):
            self._say(text)

    def tick(self) -> None:
        from modelmake.graph.progress import last_progress

        for job in list(self.jobs.values()):
            p = last_progress(self.cwd / "logs" / job["stage"] / f"{job['key']}.log")
            if p is None or not p.total:
                continue
            if self.tty or p.fraction - job["shown"] >= 0.1 or p.n == p.total:
                if p.n == p.total and job["shown"] >= 1.0:
                    continue
                job["shown"] = p.fraction
                left = f", {self.human(p.left_s)} left" if p.left_s is not None else ""
                text = f"        {job['stage']:<9} {job['key']}  {p}{left}"
                if self.tty:
                    with self._lock:
                        self.out.write("\r\x1b[K" + text[:200])
                        self.out.flush()
                else:
                    self._say(text)

    def start(self) -> None:
        def loop():
            while not self._stop.wait(self.every_s):
                self.tick()
        threading.Thread(target=loop, name="modelmake-progress", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        if self.tty:
            self._say("")


def run_snakemake(cmd: list[str], cwd: Path = ROOT, view: QuietView | None = None) -> int:
    """Run Snakemake; on failure end with each failed stage's reason and log path, so the cause is
    the last thing printed, not buried in Snakemake's error block. Without a `view`, Snakemake's
    output passes through; with one, it goes to logs/build/<time>.log and the view shows the build.

    SIGTERM, SIGINT or SIGHUP to this process is forwarded to Snakemake as SIGTERM, which ends its
    running stages (the Snakefile's onstart: lifecycle.stop_children_on_signal); should it not be
    gone STOP_GRACE_S later, it is killed, and its stages die with it (their watchdog)."""
    full_log = None
    if view is not None:
        full_log = Path(cwd) / "logs" / "build" / f"{time.strftime('%Y-%m-%dT%H-%M-%S')}-{os.getpid()}.log"
        full_log.parent.mkdir(parents=True, exist_ok=True)
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
    sink = full_log.open("w") if full_log else None
    try:
        if view is not None:
            view.start()
        for line in proc.stderr:
            seen.append(line)
            if sink:
                sink.write(line)
                sink.flush()
                view.line(line)
            elif not NOISE.match(line.rstrip("\n")):
                sys.stderr.write(line)
        rc = proc.wait()
    finally:
        if view is not None:
            view.stop()
        if sink:
            sink.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    whole = f"\n  Snakemake's whole output: {full_log.relative_to(cwd)}" if full_log else ""
    if stopped:
        name = signal.Signals(stopped[0]).name
        print(f"modelmake: stopped by {name}: the running stages were ended and their temporary folders "
              f"removed; the same command resumes the build{whole}", file=sys.stderr)
        return 128 + stopped[0]
    if rc != 0:
        out = "".join(seen)
        logs = job_logs(out)
        found = failed_jobs(out)
        if not found and view is not None:  # not a stage's failure: Snakemake's own words, briefly
            tail = [line.rstrip() for line in seen if line.strip() and not NOISE.match(line.rstrip())][-8:]
            print("\n".join(tail), file=sys.stderr)
        for rule, log, job in found:
            why = reason(Path(cwd) / log) if log else "(no log)"
            if why.startswith("(") and (said := submit_failure(seen)):
                why = said  # the job never started: the scheduler's refusal is the reason
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
        if whole:
            print(whole.lstrip("\n"), file=sys.stderr)
    return rc


def parse_jobs(output: str) -> dict[str, int]:
    """Jobs per rule from Snakemake's output (`Job stats:` table); {} when nothing is to be done."""
    if "Nothing to be done" in output or "Job stats:" not in output:
        return {}
    table = output.split("Job stats:", 1)[1]
    jobs = {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)}
    return {k: v for k, v in jobs.items() if k not in ("total", "all")}
