"""Entry point of the dataset stage: python scripts/dataset.py [hydra overrides]"""

import hydra

from modelmake.dataset import build
from modelmake.stage import entry


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg):
    entry("dataset", build, cfg)


if __name__ == "__main__":
    main()
