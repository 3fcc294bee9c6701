"""From a pod's container spec to what the runtime needs: argv and environment.

``$(VAR)`` expansion follows kubelet's (third_party/forked/golang/expansion): ``$(VAR)`` is
replaced by VAR's value when VAR is defined, left as written when it is not, and ``$$`` is
an escaped ``$`` (so ``$$(VAR)`` yields the literal ``$(VAR)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def expand(text: str, env: Mapping[str, str]) -> str:
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch != "$" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            close = text.find(")", i + 2)
            if close == -1:
                out.append(text[i:])
                break
            name = text[i + 2 : close]
            if name in env:
                out.append(env[name])
            else:
                out.append(text[i : close + 1])
            i = close + 1
        else:
            out.append("$")
            i += 1
    return "".join(out)


def environment(container: Mapping[str, Any]) -> dict[str, str]:
    """Literal ``env`` entries, each expanded against the ones before it (as kubelet does)."""
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        name = str(item.get("name", ""))
        if "value" in item or "valueFrom" not in item:
            env[name] = expand(str(item.get("value", "")), env)
    return env


def argv(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """``command`` + ``args`` with ``$(VAR)`` expanded; argv[0] is the container name without a command."""
    command: Sequence[str] = container.get("command") or []
    args: Sequence[str] = container.get("args") or []
    expanded = [expand(str(a), env) for a in (*command, *args)]
    return expanded if command else [str(container.get("name", "main")), *expanded]
