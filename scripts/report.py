"""Entry point of the report over a run or a sweep: python scripts/report.py [overrides]

Overrides may be sweeps (lora.r=4,8,16): the report reads every point's evaluate, finetune and
generate artifacts, which must be built (snakemake builds them first).
"""

import sys

from modelmake.plan import build_plan
from modelmake.report import build
from modelmake.stage import guarded, run_node


def main(argv: list[str]) -> None:
    run_node(build_plan(overrides=argv).report, None, build)


if __name__ == "__main__":
    guarded(lambda: main(sys.argv[1:]))
