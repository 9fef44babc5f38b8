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
