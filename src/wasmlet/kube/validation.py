"""The apiserver's name rules (apimachinery's validation) and messages: variable names, qualified names."""

from __future__ import annotations

import re

_STRICT_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME_MSG = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation "
    "is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
_DNS1123_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)


def is_env_var_name(name: str, *, strict: bool = False) -> bool:
    """Whether ``name`` may name a variable.

    Relaxed (Kubernetes >= 1.30, the API server's rule since 1.34): printable ASCII but ``=``.
    Strict (before): ``[-._a-zA-Z][-._a-zA-Z0-9]*``.
    """
    if strict:
        return _STRICT_ENV_NAME.fullmatch(name) is not None
    return bool(name) and "=" not in name and all(" " <= ch <= "~" for ch in name)


def qualified_name_errors(value: str) -> list[str]:
    """Why ``value`` is not a qualified name (a label key): apimachinery's IsQualifiedName."""
    errors: list[str] = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errors.append("prefix part must be non-empty")
        else:
            if len(prefix) > 253:
                errors.append("prefix part must be no more than 253 characters")
            if _DNS1123_SUBDOMAIN.fullmatch(prefix) is None:
                errors.append(f"prefix part {_DNS1123_MSG}")
    else:
        return [
            f"a qualified name {_QUALIFIED_NAME_MSG} with an optional DNS subdomain prefix and '/' "
            "(e.g. 'example.com/MyName')"
        ]
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > 63:
        errors.append("name part must be no more than 63 characters")
    if _QUALIFIED_NAME.fullmatch(name) is None:
        errors.append(f"name part {_QUALIFIED_NAME_MSG}")
    return errors
