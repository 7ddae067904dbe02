"""The one exception base every layer may raise for a user-facing error (imports nothing)."""


class AutoNormError(Exception):
    """An error shown to the user as one clear message, without a traceback (exit status 2)."""
