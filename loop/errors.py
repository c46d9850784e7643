"""User-facing errors. The CLI prints these as one line, without a traceback."""


class AlignloopError(Exception):
    """Base of every error caused by the user's input: config, data, model references."""
