"""Where the project is: the checkout this package was installed from (an editable install)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CONF_DIR = ROOT / "conf"
