"""The one error type for bad configuration, so callers (the CLI) can turn it into one line."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration field or flag has a value that is not allowed.

    The message always names the field, the value given and what is allowed, so it is
    useful as a single line on stderr.
    """


def config_error(field: str, value: Any, allowed: str) -> ConfigError:
    """Build the canonical message: ``field=value is not allowed; expected <allowed>``."""
    return ConfigError(f"{field}={value!r} is not allowed; expected {allowed}")
