"""Entry point of the generate stage: python scripts/generate.py [hydra overrides]"""

import hydra

from modelmake.generate import build
from modelmake.stage import entry


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg):
    entry("generate", build, cfg)


if __name__ == "__main__":
    main()
