"""The node's pull and image GC settings: kubelet-like names, defaults and units."""

from __future__ import annotations

from pathlib import Path

import pytest

from wasmlet import config


def load(tmp_path: Path, *argv: str, env: dict[str, str] | None = None) -> config.NodeConfig:
    return config.load(["--data-dir", str(tmp_path), "--node-ip", "127.0.0.2", *argv], env or {})


def test_pull_limits_default_to_512mi_and_two_minutes(tmp_path: Path) -> None:
    cfg = load(tmp_path)
    assert cfg.max_module_size == 512 * 2**20
    assert cfg.image_pull_timeout == 120.0


def test_pull_limits_take_quantities_and_go_durations(tmp_path: Path) -> None:
    cfg = load(tmp_path, "--max-module-size", "64Mi", env={"WASMLET_IMAGE_PULL_TIMEOUT": "1m30s"})
    assert (cfg.max_module_size, cfg.image_pull_timeout) == (64 * 2**20, 90.0)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text("max-module-size: 1G\nimage-pull-timeout: 500ms\n")
    cfg = load(tmp_path)
    assert (cfg.max_module_size, cfg.image_pull_timeout) == (10**9, 0.5)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-module-size", "lots"], "--max-module-size: 'lots' is not a quantity"),
        (["--max-module-size", "0"], "--max-module-size: '0' must be a whole number of bytes"),
        (["--image-pull-timeout", "2 minutes"], "--image-pull-timeout: '2 minutes' is not a duration"),
        (["--image-pull-timeout", "0s"], "--image-pull-timeout: '0s' must be more than zero"),
    ],
)
def test_bad_pull_settings_name_the_flag(tmp_path: Path, argv: list[str], message: str) -> None:
    with pytest.raises(config.ConfigError, match=message):
        load(tmp_path, *argv)


def test_image_gc_settings_default_to_the_kubelets(tmp_path: Path) -> None:
    cfg = load(tmp_path)
    assert (cfg.image_gc_high_threshold, cfg.image_gc_low_threshold, cfg.image_minimum_gc_age) == (
        85,
        80,
        120,
    )
    cfg = load(tmp_path, "--image-gc-high-threshold", "100", "--image-minimum-gc-age", "10m")
    assert (cfg.image_gc_high_threshold, cfg.image_minimum_gc_age) == (100, 600)


def test_image_gc_low_threshold_must_be_below_the_high_one(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match=r"--image-gc-low-threshold \(90\) must be less than"):
        load(tmp_path, "--image-gc-low-threshold", "90")
