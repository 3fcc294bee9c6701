"""The ``flags`` Ansible filter (plugins/filter/flags.py), loaded by path."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import cast

import pytest
from ansible.errors import AnsibleFilterError

FLAGS_PY = Path(__file__).resolve().parents[2] / "plugins" / "filter" / "flags.py"

FlagsFn = Callable[[object], list[str]]


@pytest.fixture(scope="module")
def flags_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wasmlet_test_flags_filter", FLAGS_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def flags(flags_module: ModuleType) -> FlagsFn:
    return cast(FlagsFn, flags_module.flags)


def test_flags_are_rendered_in_sorted_key_order(flags: FlagsFn) -> None:
    assert flags({"zeta": "z", "alpha": 1, "mid": "m=n"}) == ["--alpha=1", "--mid=m=n", "--zeta=z"]


def test_flags_render_booleans_as_lowercase_true_false(flags: FlagsFn) -> None:
    assert flags({"profiling": False, "v": True}) == ["--profiling=false", "--v=true"]


def test_flags_render_integers_one_and_zero_as_numbers_not_booleans(flags: FlagsFn) -> None:
    assert flags({"a": 1, "b": 0}) == ["--a=1", "--b=0"]


def test_flags_strip_leading_dashes_from_keys(flags: FlagsFn) -> None:
    assert flags({"--max-requests-inflight": 800, "-x": "y"}) == ["--max-requests-inflight=800", "--x=y"]


def test_flags_of_empty_dict_is_empty_list(flags: FlagsFn) -> None:
    assert flags({}) == []


@pytest.mark.parametrize("value", [["--a=1"], "a=1", None, 3])
def test_flags_reject_non_dict_input_with_filter_error(flags: FlagsFn, value: object) -> None:
    with pytest.raises(AnsibleFilterError, match=type(value).__name__):
        flags(value)


def test_filter_module_exposes_flags(flags_module: ModuleType) -> None:
    assert flags_module.FilterModule().filters() == {"flags": flags_module.flags}
