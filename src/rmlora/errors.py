"""One exception type for every user-facing mistake.

The CLI turns an :class:`RmloraError` into a single ``error: ...`` line on
stderr and exit status 2; anything else is a bug and keeps its traceback.
"""


class RmloraError(Exception):
    """Bad input from a user: unknown preset or class, corrupt file, missing data, ..."""
