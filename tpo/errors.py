"""Errors that mean "your input is wrong", not "the code is wrong".

``tpo`` commands print them as one message, without a traceback, and exit with status 2.
"""

import sys
from typing import Callable


class TPOError(ValueError):
    """A problem with the user's data, files or settings, explained in the message."""


class ConfigError(TPOError):
    """A configuration value that cannot work (unknown family, out-of-range setting, bad combination)."""


def status_of(command: Callable[[], None]) -> int:
    """Run ``command``: 0, or 2 with one ``error:`` line for a :class:`TPOError`; any other exception is
    a bug in tpo and propagates with its traceback."""
    try:
        command()
    except TPOError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
