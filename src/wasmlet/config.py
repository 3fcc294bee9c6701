"""The node agent's configuration: flags > ``WASMLET_*`` environment > config file > defaults.

Names follow krustlet-wasi's flags (``--node-ip``, ``--bootstrap-file``, ...). The config
file is YAML (or JSON) with the flag names as keys, e.g. ``node-ip: 127.0.0.2``; it is
``<data-dir>/config/config.yaml`` unless ``--config`` names another.

One file (435 lines): every option's name, parser and default in one table, which the flags,
the environment and the config file all read.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wasmlet import __version__, paths
from wasmlet.kube import events
from wasmlet.kube.quantity import parse_quantity
from wasmlet.logs.rotation import DEFAULT_MAX_FILES, DEFAULT_MAX_SIZE
from wasmlet.node import eviction
from wasmlet.node.connections import MAX_CONNECTIONS
from wasmlet.oci import limits
from wasmlet.pod import image
from wasmlet.serve import wasi_http


class ConfigError(Exception):
    """Configuration that cannot be used; the message names the setting and the cause."""


DEFAULT_MEMORY_LIMIT = 256 * 2**20
DEFAULT_MAX_OPEN_FILES = 1024
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


@dataclass(frozen=True)
class NodeConfig:
    node_name: str
    hostname: str
    node_ip: str
    addr: str
    port: int
    data_dir: Path
    bootstrap_file: Path
    kubeconfig: Path
    cert_file: Path
    private_key_file: Path
    max_pods: int
    node_labels: dict[str, str] = field(default_factory=dict)
    insecure_registries: frozenset[str] = frozenset()
    registry_ca_files: dict[str, Path] = field(default_factory=dict)
    allow_local_modules: bool = False
    allowed_host_paths: tuple[Path, ...] = ()  # hostPath volumes only under these (default: none)
    default_memory_limit: int = DEFAULT_MEMORY_LIMIT  # bytes of linear memory for containers with no limit
    max_open_files_per_container: int = DEFAULT_MAX_OPEN_FILES  # files one module may hold open at once
    event_qps: int = events.QPS  # kubelet's --event-qps: events posted per second at most; 0: unlimited
    event_burst: int = events.BURST  # kubelet's --event-burst: events posted at once after a quiet time
    container_log_max_size: int = DEFAULT_MAX_SIZE  # kubelet's flag: a log file is rotated past this
    container_log_max_files: int = DEFAULT_MAX_FILES  # kubelet's flag: files kept per run, current too
    max_module_size: int = limits.DEFAULT_MAX_MODULE_BYTES  # bytes of one module, declared or received
    image_pull_timeout: float = limits.DEFAULT_PULL_TIMEOUT  # seconds for a whole pull, all requests
    max_parallel_image_pulls: int = image.DEFAULT_MAX_PARALLEL  # pulls at once (one registry: all but one)
    image_gc_high_threshold: int = 85  # kubelet's: disk usage (%) of the store's filesystem that starts GC
    image_gc_low_threshold: int = 80  # kubelet's: disk usage (%) GC frees down to
    image_minimum_gc_age: float = 120.0  # kubelet's: seconds a module is kept after it is first seen
    max_api_connections: int = MAX_CONNECTIONS  # kubelet API connections open at once
    # kubelet's: below this memory.available, report MemoryPressure and evict pods one by one
    eviction_hard: eviction.Threshold = eviction.DEFAULT_THRESHOLD
    eviction_pressure_transition_period: float = eviction.DEFAULT_PRESSURE_TRANSITION  # seconds
    # The cluster's pod and Service ranges: routed into the node-local interface so that no packet
    # for them leaves the machine (docs/networking.md).
    cluster_cidrs: tuple[str, ...] = ()
    service_cidrs: tuple[str, ...] = ()
    wasmtime_cli: Path = field(default_factory=wasi_http.default_cli)  # serves wasi:http components

    @property
    def config_dir(self) -> Path:
        return self.data_dir / "config"


# name, type, help. Types: str, int, path, bool, labels, list.
_OPTIONS: list[tuple[str, str, str]] = [
    ("node-name", "str", "name of the Node object (default: lowercased hostname)"),
    ("hostname", "str", "hostname reported for the node and put in its serving certificate"),
    ("node-ip", "str", "IP address the node reports and serves the kubelet API on (default: the host's)"),
    ("addr", "str", "address the kubelet API listens on (default: the node IP)"),
    ("port", "int", "port of the kubelet API (default: 10250)"),
    ("data-dir", "path", "where wasmlet keeps its state (default: ~/.wasmlet or $WASMLET_HOME)"),
    ("bootstrap-file", "path", "bootstrap kubeconfig (default: <data-dir>/config/bootstrap.conf)"),
    (
        "kubeconfig",
        "path",
        "the node's kubeconfig, written by TLS bootstrap (default: <data-dir>/config/kubeconfig)",
    ),
    ("cert-file", "path", "serving certificate (default: <data-dir>/config/wasmlet.crt)"),
    ("private-key-file", "path", "serving key (default: <data-dir>/config/wasmlet.key)"),
    ("max-pods", "int", "pods this node accepts (default: 110)"),
    ("node-labels", "labels", "extra labels, key=value[,key=value...]"),
    (
        "insecure-registries",
        "list",
        "registries (host[:port]) reached over plain HTTP, comma-separated (loopback ones fall back to it)",
    ),
    ("registry-ca-files", "labels", "CA bundles of registries with their own CA: host[:port]=/path,..."),
    ("allow-local-modules", "bool", "allow fs/<path> module references (default: false)"),
    (
        "default-memory-limit",
        "str",
        "linear memory a container with no limits.memory may use (default: 256Mi)",
    ),
    ("max-open-files-per-container", "int", "files one container may hold open at once (default: 1024)"),
    (
        "allowed-host-paths",
        "list",
        "directories pods may mount as hostPath volumes, comma-separated (default: none)",
    ),
    ("event-qps", "int", "events posted per second at most, as kubelet's flag; 0: unlimited (default: 50)"),
    ("event-burst", "int", "events posted at once after a quiet time, as kubelet's flag (default: 100)"),
    ("container-log-max-size", "str", "rotate a container log before it passes this size (default: 10Mi)"),
    ("container-log-max-files", "int", "log files kept per container run, current one included (default: 5)"),
    ("max-module-size", "str", "largest wasm module a pull may download, a quantity (default: 512Mi)"),
    ("image-pull-timeout", "str", "total time one image pull may take, all its requests (default: 2m)"),
    ("max-parallel-image-pulls", "int", "image pulls at once; one registry gets all but one (default: 4)"),
    ("image-gc-high-threshold", "int", "disk usage percent that starts module GC (default: 85)"),
    ("image-gc-low-threshold", "int", "disk usage percent module GC frees down to (default: 80)"),
    ("image-minimum-gc-age", "str", "a module is never removed sooner after it is first seen (default: 2m)"),
    ("max-api-connections", "int", "kubelet API connections open at once (default: 500)"),
    (
        "cluster-cidr",
        "list",
        "the cluster's pod IP range(s) (the controller manager's flag): kept on this machine (default: none)",
    ),
    ("service-cidr", "list", "the cluster's Service IP range(s): kept on this machine (default: none)"),
    (
        "wasmtime-cli",
        "path",
        "the wasmtime CLI serving wasi:http components (default: ~/.wasmlet/bin/wasmtime-<version>/wasmtime)",
    ),
    (
        "eviction-hard",
        "str",
        "evict pods while memory is below this, kubelet syntax (default: memory.available<100Mi)",
    ),
    (
        "eviction-pressure-transition-period",
        "str",
        "how long MemoryPressure stays after memory is back above the threshold (default: 5m)",
    ),
]


def _env_name(option: str) -> str:
    return "WASMLET_" + option.upper().replace("-", "_")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wasmlet",
        description="A kubelet for WebAssembly: runs wasm32-wasi pods on wasmtime.",
        epilog="Every flag can also be set as WASMLET_<FLAG> (e.g. WASMLET_NODE_IP) or in the config file.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--version", action="version", version=f"wasmlet {__version__}")
    parser.add_argument("--config", help="config file (default: <data-dir>/config/config.yaml if it exists)")
    for name, kind, text in _OPTIONS:
        if kind == "bool":  # --flag, --flag=true|false (as Go flags take them)
            parser.add_argument(f"--{name}", nargs="?", const="true", metavar="BOOL", help=text)
        else:
            parser.add_argument(f"--{name}", help=text)
    return parser


def _as_bool(option: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"--{option}: {value!r} is not a boolean (use true or false)")


def _as_int(option: str, value: object, low: int, high: int) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise ConfigError(f"--{option}: {value!r} is not an integer") from None
    if not low <= number <= high:
        raise ConfigError(f"--{option}: {number} is out of range {low}..{high}")
    return number


def _as_labels(option: str, value: object) -> dict[str, str]:
    if isinstance(value, Mapping):
        items = [(str(k), str(v)) for k, v in value.items()]
    else:
        items = []
        for part in str(value).split(","):
            if not part.strip():
                continue
            key, sep, val = part.strip().partition("=")
            if not sep:
                raise ConfigError(f"--{option}: {part.strip()!r} is not key=value")
            items.append((key, val))
    for key, val in items:
        if len(key.rsplit("/", 1)[-1]) > 63 or not _LABEL_KEY.match(key):
            raise ConfigError(f"--{option}: {key!r} is not a valid label key")
        if len(val) > 63 or not _LABEL_VALUE.match(val):
            raise ConfigError(f"--{option}: value {val!r} of label {key!r} is not a valid label value")
    return dict(items)


def _as_ca_files(value: object) -> dict[str, Path]:
    items = (
        value.items()
        if isinstance(value, Mapping)
        else [part.strip().partition("=")[::2] for part in str(value).split(",") if part.strip()]
    )
    files: dict[str, Path] = {}
    for host, path in items:
        if not host or not path:
            raise ConfigError(f"--registry-ca-files: {host}={path} is not host[:port]=/path/to/ca.crt")
        ca = Path(str(path)).expanduser()
        if not ca.is_file():
            raise ConfigError(f"--registry-ca-files: CA file {ca} for registry {host} does not exist")
        files[str(host)] = ca
    return files


def _as_list(value: object) -> frozenset[str]:
    if isinstance(value, list | tuple):
        return frozenset(str(v).strip() for v in value if str(v).strip())
    return frozenset(v.strip() for v in str(value).split(",") if v.strip())


def _as_host_paths(value: object) -> tuple[Path, ...]:
    paths = sorted(_as_list(value))
    for path in paths:
        if not path.startswith("/"):
            raise ConfigError(f"--allowed-host-paths: {path!r} is not an absolute path")
    return tuple(Path(path) for path in paths)


_DURATION_PART = re.compile(r"([0-9]*\.?[0-9]+)(h|ms|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _as_duration(option: str, value: object) -> float:
    """Seconds from a Go duration (``2m``, ``1m30s``, ``500ms``) or a number of seconds."""
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(number + unit for number, unit in parts) != text:
            raise ConfigError(f"--{option}: {value!r} is not a duration (e.g. 2m, 90s, 1m30s)") from None
        seconds = sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise ConfigError(f"--{option}: {value!r} must be more than zero")
    return seconds


def _as_size(option: str, value: object) -> int:
    """Bytes from a quantity (``512Mi``, ``1G``, ``1048576``)."""
    try:
        size = parse_quantity(str(value).strip())
    except ValueError:
        raise ConfigError(f"--{option}: {value!r} is not a quantity (e.g. 512Mi)") from None
    if size < 1 or size != int(size):
        raise ConfigError(f"--{option}: {value!r} must be a whole number of bytes, at least 1")
    return int(size)


def _as_eviction_hard(value: object) -> eviction.Threshold:
    try:
        return eviction.parse_eviction_hard(str(value))
    except ValueError as exc:
        raise ConfigError(f"--eviction-hard: {exc}") from None


def _as_cidrs(option: str, value: object) -> tuple[str, ...]:
    networks = []
    for text in sorted(_as_list(value)):
        try:
            network = ipaddress.ip_network(text)
        except ValueError as exc:
            raise ConfigError(f"--{option}: {text!r} is not a CIDR range: {exc}") from None
        if network.prefixlen == 0:
            raise ConfigError(f"--{option}: {text} covers every address, the default route too")
        networks.append(str(network))
    return tuple(networks)


def default_node_ip(hostname: str) -> str:
    """The host's primary address: what its hostname resolves to, skipping loopback when possible."""
    try:
        infos = socket.getaddrinfo(hostname, None, socket.AF_INET)
    except OSError:
        return "127.0.0.1"
    addresses = [str(info[4][0]) for info in infos]
    public = [a for a in addresses if not ipaddress.ip_address(a).is_loopback]
    return (public or addresses or ["127.0.0.1"])[0]


def _load_file(path: Path, explicit: bool) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"--config: {path} does not exist") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config: {path} is not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of flag names to values")
    known = {name for name, _kind, _help in _OPTIONS}
    unknown = sorted(set(map(str, data)) - known)
    if unknown:
        raise ConfigError(f"--config: {path} has unknown settings: {', '.join(unknown)}")
    return {str(k): v for k, v in data.items()}


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Parse flags; argparse exits on bad flags (one line, exit 2); other problems raise ConfigError."""
    env = os.environ if environ is None else environ
    args = vars(_parser().parse_args(argv))
    flags = {k.replace("_", "-"): v for k, v in args.items()}
    from_env = {name: env[_env_name(name)] for name, _kind, _help in _OPTIONS if _env_name(name) in env}

    def early(name: str) -> object | None:
        return flags.get(name, from_env.get(name))

    data_dir_early = early("data-dir")
    data_dir = Path(str(data_dir_early)).expanduser() if data_dir_early is not None else paths.home()
    config_arg = flags.get("config", env.get("WASMLET_CONFIG"))
    config_path = Path(str(config_arg)).expanduser() if config_arg else data_dir / "config" / "config.yaml"
    merged: dict[str, Any] = {**_load_file(config_path, explicit=bool(config_arg)), **from_env, **flags}
    merged.pop("config", None)

    if "data-dir" in merged:
        data_dir = Path(str(merged["data-dir"])).expanduser()
    config_dir = data_dir / "config"
    hostname = str(merged.get("hostname") or socket.gethostname())
    node_name = str(merged.get("node-name") or hostname.lower())
    if len(node_name) > 253 or not _DNS1123.match(node_name):
        raise ConfigError(f"--node-name: {node_name!r} is not a valid node name (lowercase DNS-1123)")
    node_ip = str(merged.get("node-ip") or default_node_ip(hostname))
    try:
        ipaddress.ip_address(node_ip)
    except ValueError:
        raise ConfigError(f"--node-ip: {node_ip!r} is not an IP address") from None

    def path(name: str, default: Path) -> Path:
        value = merged.get(name)
        return Path(str(value)).expanduser() if value else default

    high = _as_int("image-gc-high-threshold", merged.get("image-gc-high-threshold", 85), 0, 100)
    low = _as_int("image-gc-low-threshold", merged.get("image-gc-low-threshold", 80), 0, 100)
    if low >= high:
        raise ConfigError(
            f"--image-gc-low-threshold ({low}) must be less than --image-gc-high-threshold ({high})"
        )

    return NodeConfig(
        node_name=node_name,
        hostname=hostname,
        node_ip=node_ip,
        addr=str(merged.get("addr") or node_ip),
        port=_as_int("port", merged.get("port", 10250), 1, 65535),
        data_dir=data_dir,
        bootstrap_file=path("bootstrap-file", config_dir / "bootstrap.conf"),
        kubeconfig=path("kubeconfig", config_dir / "kubeconfig"),
        cert_file=path("cert-file", config_dir / "wasmlet.crt"),
        private_key_file=path("private-key-file", config_dir / "wasmlet.key"),
        max_pods=_as_int("max-pods", merged.get("max-pods", 110), 1, 100000),
        node_labels=_as_labels("node-labels", merged.get("node-labels", "")),
        insecure_registries=_as_list(merged.get("insecure-registries", "")),
        registry_ca_files=_as_ca_files(merged.get("registry-ca-files", "")),
        allow_local_modules=_as_bool("allow-local-modules", merged.get("allow-local-modules", False)),
        allowed_host_paths=_as_host_paths(merged.get("allowed-host-paths", "")),
        default_memory_limit=_as_size(
            "default-memory-limit", merged.get("default-memory-limit", DEFAULT_MEMORY_LIMIT)
        ),
        max_open_files_per_container=_as_int(
            "max-open-files-per-container",
            merged.get("max-open-files-per-container", DEFAULT_MAX_OPEN_FILES),
            16,
            1 << 20,
        ),
        event_qps=_as_int("event-qps", merged.get("event-qps", events.QPS), 0, 100000),
        event_burst=_as_int("event-burst", merged.get("event-burst", events.BURST), 1, 100000),
        container_log_max_size=_as_size(
            "container-log-max-size", merged.get("container-log-max-size", DEFAULT_MAX_SIZE)
        ),
        container_log_max_files=_as_int(
            "container-log-max-files", merged.get("container-log-max-files", DEFAULT_MAX_FILES), 2, 1000
        ),
        max_module_size=_as_size("max-module-size", merged.get("max-module-size", "512Mi")),
        image_pull_timeout=_as_duration("image-pull-timeout", merged.get("image-pull-timeout", "2m")),
        max_parallel_image_pulls=_as_int(
            "max-parallel-image-pulls",
            merged.get("max-parallel-image-pulls", image.DEFAULT_MAX_PARALLEL),
            1,
            64,
        ),
        image_gc_high_threshold=high,
        image_gc_low_threshold=low,
        image_minimum_gc_age=_as_duration("image-minimum-gc-age", merged.get("image-minimum-gc-age", "2m")),
        max_api_connections=_as_int(
            "max-api-connections", merged.get("max-api-connections", MAX_CONNECTIONS), 1, 100000
        ),
        eviction_hard=_as_eviction_hard(merged.get("eviction-hard", eviction.DEFAULT_EVICTION_HARD)),
        eviction_pressure_transition_period=_as_duration(
            "eviction-pressure-transition-period", merged.get("eviction-pressure-transition-period", "5m")
        ),
        cluster_cidrs=_as_cidrs("cluster-cidr", merged.get("cluster-cidr", "")),
        service_cidrs=_as_cidrs("service-cidr", merged.get("service-cidr", "")),
        wasmtime_cli=path("wasmtime-cli", wasi_http.default_cli()),
    )
