"""Small, safe file writes: atomic replace with an explicit mode."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


def write_atomic(path: Path, data: bytes, mode: int = PUBLIC_MODE) -> bool:
    """Write ``data`` to ``path`` atomically with ``mode``.

    Returns True when the file changed (content or mode), False when it already held
    exactly this. The temporary file is created with ``mode`` from the start, so a
    secret is never readable by others, not even for an instant.
    """
    try:
        current = path.read_bytes()
        if current == data and (path.stat().st_mode & 0o777) == mode:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True
