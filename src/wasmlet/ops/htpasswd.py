"""htpasswd files with bcrypt entries, the only kind CNCF Distribution accepts."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import bcrypt

from wasmlet.fsutil import SECRET_MODE, write_atomic


def parse(text: str) -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            user, hashed = line.split(":", 1)
            entries[user.strip()] = hashed.strip()
    return entries


def _verifies(password: str, hashed: str) -> bool:
    try:
        return bcrypt.checkpw(password.encode(), hashed.encode())
    except ValueError:
        return False


def render(users: Mapping[str, str], existing: Mapping[str, str]) -> str:
    """Lines for ``users`` (name → password), keeping existing hashes that still verify."""
    lines = []
    for name in sorted(users):
        if ":" in name or not name or name != name.strip():
            raise ValueError(f"htpasswd user name {name!r} is empty, contains ':' or has surrounding spaces")
        old = existing.get(name)
        hashed = (
            old
            if old and _verifies(users[name], old)
            else bcrypt.hashpw(users[name].encode(), bcrypt.gensalt(rounds=10)).decode()
        )
        lines.append(f"{name}:{hashed}\n")
    return "".join(lines)


def checksum(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return ""


def ensure(path: Path, users: Mapping[str, str], check_only: bool = False) -> bool:
    """Make ``path`` hold exactly ``users``. Returns True when it changed (or would)."""
    try:
        current = path.read_text()
    except FileNotFoundError:
        current = ""
    existing = parse(current)
    content = render(users, existing)
    if check_only:
        return content != current or not path.exists() or (path.stat().st_mode & 0o777) != SECRET_MODE
    return write_atomic(path, content.encode(), SECRET_MODE)
