"""Where the project is: the checkout this package was installed from (an editable install)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CONF_DIR = ROOT / "conf"
# data read from storage (data.path=az://...): a local copy by content, made when the plan is built
REMOTE_DIR = ROOT / ".modelmake" / "remote"


def remote_copy(sha256: str) -> Path:
    return REMOTE_DIR / sha256
