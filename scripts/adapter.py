"""Entry point of the adapter stage: python scripts/adapter.py [hydra overrides]"""

import hydra

from modelmake.adapter import build
from modelmake.stage import entry


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg):
    entry("adapter", build, cfg)


if __name__ == "__main__":
    main()
