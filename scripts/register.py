"""Entry point of the register stage: python scripts/register.py [hydra overrides]"""

import hydra

from modelmake.registry import build
from modelmake.stage import entry


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg):
    entry("register", build, cfg)


if __name__ == "__main__":
    main()
