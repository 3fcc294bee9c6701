"""Why a value for a container cannot be read: :class:`EnvError`, kubelet's message.

Its own module because the environment (:mod:`wasmlet.pod.env`), the downward API
(:mod:`wasmlet.pod.downward`), the apiserver sources (:mod:`wasmlet.pod.sources`) and the volumes
all raise or catch it, and the environment imports the downward API.
"""

from __future__ import annotations

from collections.abc import Sequence


class EnvError(Exception):
    """The container's environment cannot be built.

    ``str(error)`` is kubelet's wording where kubelet has one (``configmap "cfg" not found``,
    ``couldn't find key k in Secret default/s``, ``unsupported fieldPath: x``, ...); for a
    malformed spec it names the entry (``env "FOO": ...``, ``envFrom[0]: ...``) and the cause.
    Being kubelet's, the messages can be the container's ``CreateContainerConfigError`` message
    as they are.
    """


def strings(values: Sequence[str], what: str) -> list[str]:
    """``values`` as a list, or :class:`EnvError` when it is not a list of strings."""
    if isinstance(values, str) or not all(isinstance(v, str) for v in values):
        raise EnvError(f"{what} must be a list of strings")
    return list(values)
