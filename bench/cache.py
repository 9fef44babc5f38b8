"""Shared cache benchmark: the SmolLM2 release built cold, then pulled into a fresh clone from a
folder cache and from Azurite (the Azure Storage emulator, on loopback), against the cold build
measured in the same run (target: pulling the release is at least 10x faster than building it);
then a LoRA-only change (lora.r=16) on the fresh clone, stage by stage: built, pulled or not needed.

    python bench/cache.py [--tiny] [--cores 2]

--tiny runs the same on the tiny fixture (seconds instead of minutes; the ratio then says little).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import md_table, parser, save_json, timed, write_section
from helpers import azurite as az_helper
from helpers.project import copy_project, nodes
from modelmake.core.journal import entries
from modelmake.recipe import RECIPE


def actions(project: Path) -> dict[str, dict]:
    """stage -> the journal's last word on it in `project`: built or pulled, and the bytes pulled."""
    out = {}
    for e in entries(project):
        if e.get("action", "build") in ("build", "pull"):
            out[e["stage"]] = e
    return out


def pulled_bytes(project: Path) -> int:
    return sum(e.get("bytes", 0) for e in entries(project) if e.get("action") == "pull")


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--tiny", action="store_true", help="the tiny fixture instead of SmolLM2")
    ap.add_argument("--cores", default="2")
    args = ap.parse_args()
    release = () if args.tiny else ("experiment=smollm2",)
    name = "tiny Phi-3" if args.tiny else "SmolLM2-135M release"
    work = Path(tempfile.mkdtemp(prefix="modelmake-bench-cache-"))
    exe, why = az_helper.ensure()
    if exe is None:
        raise SystemExit(f"bench/cache.py needs Azurite: {why}")
    results, rows = {}, []
    with az_helper.azurite(work / "azurite") as server:
        env = {"AZURE_STORAGE_CONNECTION_STRING": server.connection_string}
        first = copy_project(work / "first")
        cold, _ = timed(first, "modelmake", "build", *release, "--", "--cores", args.cores, timeout=7200,
                        what="the cold build")
        caches = {"folder": ("cache=folder", f"cache.url={work / 'folder-cache'}"),
                  "azurite": ("cache=azure", "cache.url=az://bench/release")}
        for kind, ov in caches.items():
            push, _ = timed(first, "modelmake", "cache", "push", *release, *ov, env=env, what=f"push to {kind}")
            clone = copy_project(work / f"clone-{kind}")
            pull, _ = timed(clone, "modelmake", "build", *release, *ov, "--", "--cores", args.cores, env=env,
                            what=f"the pull from {kind}")
            did = actions(clone)
            results[kind] = {"cold_s": cold, "push_s": push, "pull_s": pull, "pulled_bytes": pulled_bytes(clone),
                             "built": sorted(s for s, e in did.items() if e.get("action", "build") == "build"),
                             "pulled": sorted(s for s, e in did.items() if e.get("action") == "pull")}
            rows.append([kind, f"{cold:.1f} s", f"{push:.1f} s", f"{pull:.1f} s",
                         f"{results[kind]['pulled_bytes'] / 1e6:.1f} MB", f"{cold / pull:.1f}x",
                         ", ".join(results[kind]["built"])])
            if kind == "azurite":  # a LoRA-only change on the fresh clone: what is built, pulled, not needed
                seen = len(entries(clone))
                lora_s, _ = timed(clone, "modelmake", "build", *release, *ov, "lora.r=16", "--", "--cores",
                                  args.cores, env=env, timeout=7200, what="the LoRA-only change")
                new = {e["stage"]: e.get("action", "build") for e in entries(clone)[seen:]
                       if e.get("action", "build") in ("build", "pull")}
                point = nodes(clone, *release, "lora.r=16")
                hits = [[s.name, {"build": "built", "pull": "pulled"}.get(new.get(s.name), "already here" if
                                  (clone / point[s.name].manifest).exists() else "not needed")]
                        for s in RECIPE.stages if s.name in point]
                results["lora_change"] = {"seconds": lora_s, "stages": dict(hits)}
    table = md_table(["cache", f"cold build ({name})", "publish", "pull into a fresh clone", "bytes pulled",
                      "cold / pull (target >= 10x)", "built on the clone"], rows, align="llrrrrl")
    lora = md_table(["stage", "lora.r=16 on the fresh clone (Azurite)"], hits, align="ll")
    print(table, "\n", lora, sep="\n")
    save_json("cache", results)
    write_section("cache", "Shared cache: pull vs build",
                  "The release built cold in a fresh copy, published, then built in another fresh copy with the "
                  "cache set; the ratio is against the cold build measured in the same run.\n\n" + table
                  + f"\n\nA LoRA-only change on that clone took {results['lora_change']['seconds']:.1f} s:\n\n" + lora)


if __name__ == "__main__":
    main()
