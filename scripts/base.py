"""Entry point of the base stage: python scripts/base.py [hydra overrides]"""

import hydra

from modelmake.base_model import build
from modelmake.stage import entry


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg):
    entry("base", build, cfg)


if __name__ == "__main__":
    main()
