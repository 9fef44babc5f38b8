"""How often the SLURM executor looks at its jobs.

snakemake-executor-plugin-slurm (2.8.0) checks job states `init_seconds_before_status_checks`
after a submission, then waits 10 s longer after every check that finds no job finished (up to
180 s), and the wait is not configurable (upstream issue #319). A job of 20 s is therefore seen
done at its third check (2 + 12 + 22 s) and the next stage starts ~16 s late: on the tiny model
that doubles a SLURM build. Jobs of minutes and hours (a GPU node) lose little, and a big
cluster's controller is better off with the backoff, so the cap is per resource group:
`resources.slurm_status_max_s` (conf/resources/), null keeps the plugin's own behaviour.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

# The plugin version whose backoff this replaces (requirements/base.txt pins it): its
# check_active_jobs() sets `next_seconds_between_status_checks` and RemoteExecutor.sleep() waits
# that long. Another version may poll differently: the cap is then left out, with a warning.
PLUGIN = "snakemake-executor-plugin-slurm"
PLUGIN_VERSION = "2.8.0"


def cap_status_interval(seconds: float) -> str:
    """Cap the SLURM executor's wait between status checks at `seconds` for this process.
    Returns the line to print (applied, or why not)."""
    try:
        found = version(PLUGIN)
    except PackageNotFoundError:
        return f"{PLUGIN} is not installed: status polling left as it is"
    if found != PLUGIN_VERSION:
        return (f"{PLUGIN} {found} is not {PLUGIN_VERSION}: its status polling is left as it is "
                f"(resources.slurm_status_max_s={seconds} not applied)")
    from snakemake_executor_plugin_slurm import Executor

    prop = Executor.next_seconds_between_status_checks  # RemoteExecutor's property

    def capped(self, value):
        prop.fset(self, None if value is None else min(value, seconds))

    Executor.next_seconds_between_status_checks = property(prop.fget, capped)
    return f"SLURM job states checked at least every {seconds:g} s (resources.slurm_status_max_s)"


# --- a failed job, in SLURM's own words ------------------------------------------------------------
NODE_LOST = {"NODE_FAIL", "BOOT_FAIL"}


def slurm_job_record(job_id: str) -> dict | None:
    """`scontrol show job JOB` as a dict (JobState, NodeList, Reason, ...); None where SLURM cannot
    say (no scontrol, the controller unreachable, the job long purged)."""
    import subprocess

    try:
        r = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    return dict(kv.split("=", 1) for kv in r.stdout.split() if "=" in kv)


def explain_job(job_id: str) -> str | None:
    """One line on where and how a SLURM job ended, naming its node: what a failed stage's message
    leads with when its job ran on a cluster."""
    rec = slurm_job_record(job_id)
    if rec is None:
        return None
    state, node = rec.get("JobState", "UNKNOWN"), rec.get("NodeList") or rec.get("BatchHost") or "?"
    line = f"SLURM job {job_id} ended {state} on node {node}"
    if state in NODE_LOST:
        line += (" (the node was lost: the job's processes are gone with it; nothing it wrote counts as built, "
                 "and the next build removes its temporary folder)")
    elif rec.get("Reason") not in (None, "None"):
        line += f" ({rec['Reason']})"
    return line
