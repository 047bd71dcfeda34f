"""The one exception a user mistake raises: the CLI prints its message on one line."""


class ResdegError(Exception):
    """Bad input or an unusable cache entry, explained in one line (no traceback)."""
