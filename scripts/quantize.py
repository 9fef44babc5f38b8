"""Entry point of the quantize stage: python scripts/quantize.py [hydra overrides]"""

import hydra

from modelmake.quantize import build
from modelmake.stage import entry


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg):
    entry("quantize", build, cfg)


if __name__ == "__main__":
    main()
