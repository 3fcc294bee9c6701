"""wasmlet.ops.htpasswd.ensure: bcrypt entries, idempotence, removal, check mode."""

from __future__ import annotations

from pathlib import Path

import bcrypt
import pytest

from wasmlet.ops import htpasswd


def _entries(path: Path) -> dict[str, str]:
    return htpasswd.parse(path.read_text())


def test_ensure_writes_bcrypt_entries_that_verify(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    assert htpasswd.ensure(path, {"alice": "s3cret", "bob": "hunter2"}) is True
    entries = _entries(path)
    assert sorted(entries) == ["alice", "bob"]
    assert entries["alice"].startswith("$2")
    assert bcrypt.checkpw(b"s3cret", entries["alice"].encode())
    assert bcrypt.checkpw(b"hunter2", entries["bob"].encode())
    assert not bcrypt.checkpw(b"hunter2", entries["alice"].encode())


def test_ensure_writes_file_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    htpasswd.ensure(path, {"alice": "pw"})
    assert path.stat().st_mode & 0o777 == 0o600


def test_ensure_is_idempotent_and_leaves_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    htpasswd.ensure(path, {"alice": "pw", "bob": "pw2"})
    before = path.read_bytes()
    inode = path.stat().st_ino
    assert htpasswd.ensure(path, {"alice": "pw", "bob": "pw2"}) is False
    assert path.read_bytes() == before
    assert path.stat().st_ino == inode


def test_ensure_rehashes_only_the_user_whose_password_changed(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    htpasswd.ensure(path, {"alice": "old", "bob": "keep"})
    bob_before = _entries(path)["bob"]
    assert htpasswd.ensure(path, {"alice": "new", "bob": "keep"}) is True
    entries = _entries(path)
    assert bcrypt.checkpw(b"new", entries["alice"].encode())
    assert not bcrypt.checkpw(b"old", entries["alice"].encode())
    assert entries["bob"] == bob_before


def test_ensure_removes_users_not_listed(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    htpasswd.ensure(path, {"alice": "pw", "mallory": "pw"})
    assert htpasswd.ensure(path, {"alice": "pw"}) is True
    assert list(_entries(path)) == ["alice"]


def test_ensure_restores_mode_0600_on_unchanged_content(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    htpasswd.ensure(path, {"alice": "pw"})
    path.chmod(0o644)
    assert htpasswd.ensure(path, {"alice": "pw"}) is True
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("name", ["ali:ce", ":", ""])
def test_ensure_rejects_user_names_that_are_empty_or_contain_colon(tmp_path: Path, name: str) -> None:
    path = tmp_path / "htpasswd"
    with pytest.raises(ValueError, match="htpasswd user name"):
        htpasswd.ensure(path, {"alice": "pw", name: "pw"})
    assert not path.exists()


def test_check_only_on_missing_file_reports_change_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    assert htpasswd.ensure(path, {"alice": "pw"}, check_only=True) is True
    assert not path.exists()


def test_check_only_reports_password_change_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    htpasswd.ensure(path, {"alice": "pw"})
    before = path.read_bytes()
    assert htpasswd.ensure(path, {"alice": "other"}, check_only=True) is True
    assert path.read_bytes() == before


def test_check_only_reports_no_change_when_file_matches(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    htpasswd.ensure(path, {"alice": "pw"})
    assert htpasswd.ensure(path, {"alice": "pw"}, check_only=True) is False


def test_check_only_reports_wrong_mode_without_fixing_it(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    htpasswd.ensure(path, {"alice": "pw"})
    path.chmod(0o644)
    assert htpasswd.ensure(path, {"alice": "pw"}, check_only=True) is True
    assert path.stat().st_mode & 0o777 == 0o644


def test_parse_skips_comments_and_lines_without_colon() -> None:
    assert htpasswd.parse("# a:b\nnocolon\nalice:$2b$hash\n") == {"alice": "$2b$hash"}
