"""Entry point of the evaluate stage: python scripts/evaluate.py [hydra overrides]"""

import hydra

from modelmake.evaluate import build
from modelmake.stage import entry


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg):
    entry("evaluate", build, cfg)


if __name__ == "__main__":
    main()
