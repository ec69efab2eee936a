"""Errors that mean "your input is wrong", not "the code is wrong".

``tpo`` commands print them as one message, without a traceback, and exit with status 2.
"""


class TPOError(ValueError):
    """A problem with the user's data, files or settings, explained in the message."""


class ConfigError(TPOError):
    """A configuration value that cannot work (unknown family, out-of-range setting, bad combination)."""
