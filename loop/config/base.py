"""ConfigError and the field check shared by every section of the config schema."""

from __future__ import annotations

from alignloop.errors import AlignloopError


class ConfigError(AlignloopError, ValueError):
    """A config problem, always naming the dotted key it is about."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config key '{key}': {message}")


def require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)
