"""`python -m modelmake ...`: the CLI in the running interpreter (how rules run a stage)."""

import sys

from modelmake.cli import main

sys.exit(main())
