from __future__ import annotations

import pytest

from wasmlet.pod import env as pod_env


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "alpha"),
        ("x-$(A)-y", "x-alpha-y"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$", "$"),
        ("$", "$"),
        ("$x", "$x"),
        ("$(A", "$(A"),
        ("$(A)$(B)", "alphabeta"),
        ("", ""),
    ],
)
def test_expansion_follows_kubelet_rules(text: str, expected: str) -> None:
    assert pod_env.expand(text, {"A": "alpha", "B": "beta"}) == expected


def test_env_entries_expand_against_earlier_ones_only() -> None:
    container = {
        "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "$(A)-$(C)"}, {"name": "C", "value": "3"}]
    }
    assert pod_env.environment(container) == {"A": "1", "B": "1-$(C)", "C": "3"}


def test_argv_is_container_name_then_args_without_command() -> None:
    container = {"name": "main", "args": ["--greet", "$(WHO)"]}
    assert pod_env.argv(container, {"WHO": "world"}) == ["main", "--greet", "world"]


def test_argv_is_command_then_args_with_command() -> None:
    container = {"name": "main", "command": ["server.wasm", "-v"], "args": ["$(X)"]}
    assert pod_env.argv(container, {"X": "1"}) == ["server.wasm", "-v", "1"]
