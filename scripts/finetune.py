"""Entry point of the finetune stage: python scripts/finetune.py [hydra overrides]"""

import hydra

from modelmake.finetune import build
from modelmake.stage import entry


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg):
    entry("finetune", build, cfg)


if __name__ == "__main__":
    main()
