"""Test helpers: project copies and builds (`project`), fault injection (`faults`)."""
