"""One exception type for every refusal, so entry points print one clear line and exit non-zero."""


class ModelmakeError(Exception):
    """Bad input or a broken invariant, with a message naming the file, line and field."""
