"""Settings from environment variables, shared by every docpipe process: loading them with one
clear line per bad variable, and the names they must follow."""

from __future__ import annotations

from typing import TypeVar

from pydantic import AliasChoices, ValidationError
from pydantic_settings import BaseSettings

# Kubernetes-style names: the pipeline name is also a label value and part of object names.
PIPELINE_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class SettingsError(Exception):
    """The environment holds a value docpipe cannot use; the message says which and why."""


S = TypeVar("S", bound=BaseSettings)


def env_name(cls: type[BaseSettings], field: str) -> str:
    """The environment variable that sets `field` of `cls`."""
    info = cls.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        first = alias.choices[0]
        if isinstance(first, str):
            return first
    prefix = str(cls.model_config.get("env_prefix", ""))
    return (prefix + field).upper()


def load_settings(cls: type[S]) -> S:
    """Read `cls` from the environment; raise SettingsError with one line per bad variable."""
    try:
        return cls()
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            loc = error["loc"]
            field = str(loc[0]) if loc else ""
            if field in cls.model_fields:
                # Secrets and URLs (which may carry a password) are never echoed back.
                secret = field.endswith(("_key", "_url", "_secret"))
                given = "<hidden>" if secret else repr(error.get("input"))
                lines.append(f"{env_name(cls, field)}: {error['msg']} (got {given})")
            else:
                lines.append(str(error["msg"]).removeprefix("Value error, "))
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from None
