"""wasmlet.pod.volumes.host_paths: hostPath volumes are opt-in, and never reach the node's own state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from wasmlet import config
from wasmlet.held_dir import UnsafePathError, open_beneath
from wasmlet.pod.volumes import host_paths
from wasmlet.pod.volumes.host_paths import HostPathPolicy


@pytest.fixture
def policy(tmp_path: Path) -> HostPathPolicy:
    (tmp_path / "data" / "logs").mkdir(parents=True)
    (tmp_path / "state").mkdir()
    (tmp_path / "data" / "escape").symlink_to(tmp_path / "state")
    return HostPathPolicy.of(
        [tmp_path / "data", "/"], protected=[tmp_path / "state", tmp_path / "data" / "node"]
    )


def test_nothing_is_allowed_by_default(tmp_path: Path) -> None:
    refusal = HostPathPolicy().refusal(str(tmp_path))
    assert refusal == f"{tmp_path} is not under a directory this node allows (--allowed-host-paths: none)"


def test_a_directory_under_an_allowed_prefix_is_allowed(policy: HostPathPolicy, tmp_path: Path) -> None:
    assert policy.refusal(str(tmp_path / "data" / "logs")) is None
    assert policy.refusal(str(tmp_path / "data" / "not-yet-made")) is None


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "{tmp}",
        "{tmp}/state",
        "{tmp}/state/pki",
        "{tmp}/data/node",
        "{tmp}/data/escape",
        "{tmp}/data/escape/x",
    ],
)
def test_the_nodes_state_and_what_holds_it_are_refused_even_under_an_allowed_prefix(
    policy: HostPathPolicy, tmp_path: Path, path: str
) -> None:
    path = path.format(tmp=tmp_path)
    assert (
        policy.refusal(path)
        == f"{path} holds or is inside the node's state ({_protected(tmp_path, path)}): never mounted"
    )


def _protected(tmp_path: Path, path: str) -> Path:
    return tmp_path / "data" / "node" if path.endswith("data/node") else tmp_path / "state"


def test_a_pod_is_refused_naming_the_volume_field_and_the_flag(tmp_path: Path) -> None:
    pod = {
        "spec": {
            "volumes": [
                {"name": "a", "emptyDir": {}},
                {"name": "b", "hostPath": {"path": str(tmp_path / "allowed" / "x")}},
                {"name": "c", "hostPath": {"path": "/etc"}},
            ]
        }
    }
    policy = HostPathPolicy.of([tmp_path / "allowed"], protected=[])
    assert policy.pod_refusal(pod) == (
        f"spec.volumes[2].hostPath.path: /etc is not under a directory this node allows "
        f"(--allowed-host-paths: {tmp_path / 'allowed'})"
    )
    assert policy.pod_refusal({"spec": {"volumes": [{"name": "r", "hostPath": {"path": "rel"}}]}}) == (
        "spec.volumes[0].hostPath.path: not an absolute path"
    )
    assert policy.pod_refusal({"spec": {}}) is None


def test_the_flag_takes_absolute_paths_only() -> None:
    args = ["--node-name", "n", "--node-ip", "127.0.0.9", "--data-dir", "/nonexistent/wasmlet"]
    assert config.load([*args, "--allowed-host-paths", "/srv/b,/srv/a"], {}).allowed_host_paths == (
        Path("/srv/a"),
        Path("/srv/b"),
    )
    assert config.load(args, {}).allowed_host_paths == ()
    with pytest.raises(config.ConfigError, match="--allowed-host-paths: 'srv' is not an absolute path"):
        config.load([*args, "--allowed-host-paths", "srv"], {})


def test_directory_or_create_makes_real_directories_below_the_prefix(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    policy = HostPathPolicy.of([allowed], protected=[])
    policy.make_directory(str(allowed / "a" / "b"), 0o750)
    assert (allowed / "a" / "b").is_dir()
    assert (allowed / "a" / "b").stat().st_mode & 0o777 == 0o750  # not narrowed by the umask
    with pytest.raises(UnsafePathError, match="not under a directory this node allows"):
        policy.make_directory(str(tmp_path / "elsewhere"), 0o755)
    assert not (tmp_path / "elsewhere").exists()


def test_directory_or_create_never_creates_through_a_symlink_swapped_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pod swaps a parent for a symlink to outside between the check and the creation."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "a").mkdir(parents=True)
    outside.mkdir()
    policy = HostPathPolicy.of([allowed], protected=[])

    def swapped_first(base: Path, relative: Any, **kwargs: Any) -> Any:
        (allowed / "a").rename(tmp_path / "moved")
        (allowed / "a").symlink_to(outside)
        return open_beneath(base, relative, **kwargs)

    monkeypatch.setattr(host_paths, "open_beneath", swapped_first)
    with pytest.raises(UnsafePathError, match="is not a directory"):
        policy.make_directory(str(allowed / "a" / "new"), 0o755)
    assert list(outside.iterdir()) == []  # os.makedirs would have made outside/new
