from __future__ import annotations

import re
from pathlib import Path

import pytest

from wasmlet import config


def load(argv: list[str], env: dict[str, str] | None = None, tmp: Path | None = None) -> config.NodeConfig:
    base = ["--data-dir", str(tmp)] if tmp else []
    return config.load([*base, *argv], env or {})


def test_flags_beat_environment_beat_config_file(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text("node-ip: 127.0.0.5\nport: 10300\nmax-pods: 7\n")
    cfg = load(["--port", "10301"], {"WASMLET_NODE_IP": "127.0.0.6"}, tmp_path)
    assert cfg.port == 10301
    assert cfg.node_ip == "127.0.0.6"
    assert cfg.max_pods == 7


def test_event_rate_defaults_to_kubelets_and_can_be_lifted(tmp_path: Path) -> None:
    defaults = load(["--node-ip", "127.0.0.2"], tmp=tmp_path)
    assert (defaults.event_qps, defaults.event_burst) == (50, 100)
    cfg = load(["--node-ip", "127.0.0.2", "--event-qps", "0"], {"WASMLET_EVENT_BURST": "500"}, tmp_path)
    assert (cfg.event_qps, cfg.event_burst) == (0, 500)


def test_kubelet_api_connections_are_capped_at_500_unless_set(tmp_path: Path) -> None:
    assert load(["--node-ip", "127.0.0.2"], tmp=tmp_path).max_api_connections == 500
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text("max-api-connections: 64\n")
    assert load(["--node-ip", "127.0.0.2"], tmp=tmp_path).max_api_connections == 64
    with pytest.raises(config.ConfigError, match="--max-api-connections: 0 is out of range"):
        load(["--node-ip", "127.0.0.2", "--max-api-connections", "0"], tmp=tmp_path)


def test_defaults_follow_the_data_dir(tmp_path: Path) -> None:
    cfg = load(["--node-name", "n1", "--node-ip", "127.0.0.2"], tmp=tmp_path)
    assert cfg.bootstrap_file == tmp_path / "config" / "bootstrap.conf"
    assert cfg.kubeconfig == tmp_path / "config" / "kubeconfig"
    assert cfg.addr == "127.0.0.2"
    assert cfg.port == 10250


def test_node_labels_and_insecure_registries_parse(tmp_path: Path) -> None:
    cfg = load(
        [
            "--node-ip",
            "127.0.0.2",
            "--node-labels",
            "a=1,example.com/b=two",
            "--insecure-registries",
            "127.0.0.1:5000, localhost:5001",
        ],
        tmp=tmp_path,
    )
    assert cfg.node_labels == {"a": "1", "example.com/b": "two"}
    assert cfg.insecure_registries == {"127.0.0.1:5000", "localhost:5001"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--node-ip", "not-an-ip"], "--node-ip"),
        (["--node-name", "Bad_Name"], "--node-name"),
        (["--port", "70000"], "--port"),
        (["--node-labels", "novalue"], "--node-labels"),
        (["--allow-local-modules", "--node-ip", "127.0.0.1", "--node-labels", "k=v=w"], "--node-labels"),
        (["--node-ip", "127.0.0.1", "--event-qps", "-1"], "--event-qps"),
        (["--node-ip", "127.0.0.1", "--event-burst", "0"], "--event-burst"),
    ],
)
def test_bad_values_name_the_setting(tmp_path: Path, argv: list[str], message: str) -> None:
    with pytest.raises(config.ConfigError, match=message):
        load(argv, tmp=tmp_path)


def test_unknown_config_file_keys_are_refused(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text("node-ip: 127.0.0.5\nnode_ip_typo: 1\n")
    with pytest.raises(config.ConfigError, match="node_ip_typo"):
        load([], tmp=tmp_path)


def test_environment_booleans(tmp_path: Path) -> None:
    assert load(
        ["--node-ip", "127.0.0.2"], {"WASMLET_ALLOW_LOCAL_MODULES": "true"}, tmp_path
    ).allow_local_modules
    with pytest.raises(config.ConfigError, match="boolean"):
        load(["--node-ip", "127.0.0.2"], {"WASMLET_ALLOW_LOCAL_MODULES": "maybe"}, tmp_path)


def test_a_pod_with_no_memory_limit_gets_the_nodes_default_and_files_are_capped(tmp_path: Path) -> None:
    defaults = load(["--node-ip", "127.0.0.9"], tmp=tmp_path)
    assert (defaults.default_memory_limit, defaults.max_open_files_per_container) == (256 * 2**20, 1024)
    chosen = load(["--default-memory-limit", "64Mi", "--max-open-files-per-container", "100"], tmp=tmp_path)
    assert (chosen.default_memory_limit, chosen.max_open_files_per_container) == (64 * 2**20, 100)
    with pytest.raises(
        config.ConfigError, match=re.escape("--max-open-files-per-container: 3 is out of range 16..1048576")
    ):
        load(["--max-open-files-per-container", "3"], tmp=tmp_path)
    with pytest.raises(config.ConfigError, match="--default-memory-limit: 'lots' is not a quantity"):
        load(["--default-memory-limit", "lots"], tmp=tmp_path)


def test_cluster_and_service_ranges_are_lists_of_cidrs(tmp_path: Path) -> None:
    defaults = load(["--node-ip", "127.0.0.2"], tmp=tmp_path)
    assert (defaults.cluster_cidrs, defaults.service_cidrs) == ((), ())
    cfg = load(
        ["--node-ip", "127.0.0.2", "--cluster-cidr", "10.245.0.0/16, 10.244.0.0/16,,fd00:10:244::/56"],
        {"WASMLET_SERVICE_CIDR": "10.96.0.0/12"},
        tmp_path,
    )
    assert cfg.cluster_cidrs == ("10.244.0.0/16", "10.245.0.0/16", "fd00:10:244::/56")
    assert cfg.service_cidrs == ("10.96.0.0/12",)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(
        "cluster-cidr: [10.244.0.0/16]\nservice-cidr: [10.96.0.0/12, 'fd00:10:96:0::/112']\n"
    )
    from_file = load(["--node-ip", "127.0.0.2"], tmp=tmp_path)
    assert from_file.cluster_cidrs == ("10.244.0.0/16",)
    assert from_file.service_cidrs == ("10.96.0.0/12", "fd00:10:96::/112")


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--cluster-cidr", "10.244.0.1/16", "--cluster-cidr: '10.244.0.1/16' is not a CIDR range: "),
        ("--cluster-cidr", "10.244.0.0/16,pods", "--cluster-cidr: 'pods' is not a CIDR range: "),
        ("--service-cidr", "10.96.0.0/33", "--service-cidr: '10.96.0.0/33' is not a CIDR range: "),
        (
            "--cluster-cidr",
            "0.0.0.0/0",
            "--cluster-cidr: 0.0.0.0/0 covers every address, the default route too",
        ),
        ("--service-cidr", "10.96.0.0/12,::/0", "--service-cidr: ::/0 covers every address"),
    ],
)
def test_bad_cluster_and_service_ranges_name_the_flag(
    tmp_path: Path, flag: str, value: str, message: str
) -> None:
    with pytest.raises(config.ConfigError, match="^" + re.escape(message)):
        load(["--node-ip", "127.0.0.2", flag, value], tmp=tmp_path)
