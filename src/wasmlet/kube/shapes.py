"""Type checks on decoded Kubernetes objects (JSON as the apiserver sends it, or anything a
caller passes), with messages that name the place and the cause. Each user raises its own
exception (env → ``EnvError``, volumes → ``VolumeError``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

_KINDS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "a boolean"),
    ((int, float, Decimal), "a number"),
    (str, "a string"),
    (Mapping, "an object"),
    ((list, tuple), "a list"),
)


def kind(value: object) -> str:
    """``value``'s JSON kind, for messages."""
    if value is None:
        return "null"
    for types, name in _KINDS:
        if isinstance(value, types):
            return name
    return type(value).__name__


class Shapes:
    """Checks that raise ``error(message)``."""

    def __init__(self, error: Callable[[str], Exception]) -> None:
        self.error = error

    def object(self, value: object, where: str, *, missing_ok: bool = False) -> Mapping[str, Any]:
        if value is None and missing_ok:
            return {}
        if not isinstance(value, Mapping):
            raise self.error(f"{where}: expected an object, not {kind(value)}")
        return value

    def string(self, obj: Mapping[str, Any], key: str, where: str) -> str:
        """``obj[key]`` as a string; "" when absent or null (as Go decodes it)."""
        value = obj.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.error(f"{where}: {key} must be a string, not {kind(value)}")
        return value

    def required(self, obj: Mapping[str, Any], key: str, where: str) -> str:
        value = self.string(obj, key, where)
        if not value:
            raise self.error(f"{where}: {key} is required")
        return value

    def boolean(self, obj: Mapping[str, Any], key: str, where: str) -> bool:
        value = obj.get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self.error(f"{where}: {key} must be a boolean, not {kind(value)}")
        return value
