"""Entry point of the export stage: python scripts/export.py [hydra overrides]"""

import hydra

from modelmake.export import build
from modelmake.stage import entry


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg):
    entry("export", build, cfg)


if __name__ == "__main__":
    main()
