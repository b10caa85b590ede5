"""User-facing errors. The CLI prints these as one clear message, never a traceback."""


class KtError(Exception):
    """An error the user can fix; the message says what went wrong and how to fix it."""


class DataError(KtError):
    """Bad input data: the message names the file, line, column and the fix."""


class ConfigError(KtError):
    """A bad setting or combination of settings."""
