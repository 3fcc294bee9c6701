"""What every benchmark shares: result records, machine facts, timing and /proc helpers, and the
real parts they run against (a control plane, the registry, ``wasmlet`` nodes, pods, a watch).

Nothing here imports the integration tests (they drag pytest in); the few helpers they share
with them are small and written again on top of :mod:`wasmlet.kube.client` and :mod:`wasmlet.oci.push`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import wasmtime
import yaml

from wasmlet import __version__, paths
from wasmlet.kube import kubeconfig
from wasmlet.kube.client import ApiError, Client
from wasmlet.oci.push import push_module
from wasmlet.ops import tokens

ROOT = Path(__file__).resolve().parents[1]
MODULES = ROOT / "bench" / "modules"
RESULTS_DIR = ROOT / "bench" / "results"
BIN = Path(sys.executable).parent
REGISTRY = "127.0.0.1:5000"
NODE_IP = "127.0.0.8"  # bench nodes use 127.0.0.8 and up; the integration tests use lower ones
CLK_TCK = os.sysconf("SC_CLK_TCK")

T = TypeVar("T")


class BenchError(Exception):
    """A benchmark could not run (not a missed target: those are results)."""


# Things seen along the way that are not figures (e.g. how a node exited); run.py records them.
OBSERVATIONS: list[str] = []


# -- result records ------------------------------------------------------------------------


@dataclass
class Figure:
    """One number next to its target: ``value <op> target`` means met."""

    id: str
    title: str
    value: float | None
    unit: str
    target: float | None = None
    op: str = "<="
    detail: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None or self.target is None:
            return None
        return self.value <= self.target if self.op == "<=" else self.value >= self.target

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "value": self.value,
            "unit": self.unit,
            "target": self.target,
            "op": self.op,
            "met": self.met,
            "detail": self.detail,
        }


@dataclass
class Outcome:
    """What one benchmark produced: its figures, the raw data behind them, and notes."""

    name: str
    figures: list[Figure] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    not_measured: list[str] = field(default_factory=list)
    error: str | None = None
    duration_s: float = 0.0
    commit: str = ""  # the checkout it ran from (results of several runs of a day are merged)

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "figures": [f.as_dict() for f in self.figures],
            "data": self.data,
            "notes": self.notes,
            "not_measured": self.not_measured,
            "error": self.error,
            "duration_s": round(self.duration_s, 3),
            "commit": self.commit,
        }


@dataclass
class Context:
    """What a benchmark gets: smoke or full scale, a scratch directory, a log, the cluster (lazily)."""

    smoke: bool
    workdir: Path
    log: Callable[[str], None]
    cluster_factory: Callable[[], Cluster]
    profile: bool = True
    results_dir: Path = RESULTS_DIR  # where the run's JSON and kept profiles go (--output)
    _cluster: Cluster | None = None

    def scale(self, full: int, smoke: int) -> int:
        return smoke if self.smoke else full

    def seconds(self, full: float, smoke: float) -> float:
        return smoke if self.smoke else full

    def cluster(self) -> Cluster:
        if self._cluster is None:
            self._cluster = self.cluster_factory()
        return self._cluster

    def quiet(self) -> None:
        """Before a measurement: wait until no other heavy job shares the machine (full runs only)."""
        if not self.smoke:
            wait_quiet(self.log)


# -- statistics and timing -----------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linearly interpolated between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> dict[str, float]:
    """n, min, p50, p90, p99, max and mean of ``values`` (each multiplied by ``scale``)."""
    if not values:
        return {"n": 0}
    scaled = [v * scale for v in values]
    return {
        "n": len(scaled),
        "min": round(min(scaled), digits),
        "p50": round(percentile(scaled, 50), digits),
        "p90": round(percentile(scaled, 90), digits),
        "p99": round(percentile(scaled, 99), digits),
        "max": round(max(scaled), digits),
        "mean": round(sum(scaled) / len(scaled), digits),
    }


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.1) -> T:
    """Poll ``probe`` until it returns something truthy; :class:`BenchError` naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def unique(prefix: str, length: int = 5) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return f"{prefix}-{''.join(secrets.choice(alphabet) for _index in range(length))}"


# -- processes (/proc) ---------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on; comm may hold spaces


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads) so far."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime and stime are fields 14 and 15


def _status_value(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {key}")


def rss_bytes(pid: int) -> int:
    return _status_value(pid, "VmRSS") * 1024


def thread_count(pid: int) -> int:
    return _status_value(pid, "Threads")


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def pids_where(predicate: Callable[[list[str]], bool]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and predicate(argv := cmdline(int(entry.name))) and argv:
            found.append(int(entry.name))
    return sorted(found)


def busy_jobs() -> list[str]:
    """Other heavy jobs on this machine (test suites, playbooks) that would skew a measurement."""
    mine = {os.getpid(), os.getppid()}
    words = ("pytest", "molecule", "ansible-playbook", "ansible-test", "make test", ".ci/run")
    return [
        " ".join(cmdline(pid))[:120]
        for pid in pids_where(lambda argv: any(w in " ".join(argv[:3]) for w in words))
        if pid not in mine
    ]


def wait_quiet(log: Callable[[str], None], limit: float = 3600.0) -> None:
    """Wait (bounded) until no test suite or playbook runs, so measurements own the CPU."""
    deadline = time.monotonic() + limit
    while jobs := busy_jobs():
        if time.monotonic() > deadline:
            raise BenchError(f"other heavy jobs still running after {limit:.0f}s: {jobs[:3]}")
        log(f"waiting for other jobs to finish: {jobs[0]}")
        time.sleep(30)


class CpuMeter:
    """CPU seconds of a set of processes between ``start()`` and ``stop()``."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._start: dict[str, float] = {}
        self._t0 = 0.0
        self.seconds: dict[str, float] = {}
        self.elapsed = 0.0

    def start(self) -> CpuMeter:
        self._t0 = time.monotonic()
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        return self

    def stop(self) -> dict[str, float]:
        self.elapsed = time.monotonic() - self._t0
        self.seconds = {
            name: round(cpu_seconds(pid) - self._start[name], 3)
            for name, pid in self.pids.items()
            if Path(f"/proc/{pid}").exists()
        }
        return self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {"elapsed_s": round(self.elapsed, 3), "cpu_s": self.seconds}


# -- machine and versions ------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    mem_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return {
        "cpu_model": models[0] if models else platform.processor(),
        "cores": os.cpu_count(),
        "ram_bytes": mem_kib * 1024,
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "arch": platform.machine(),
    }


def git_commit() -> str:
    """The checkout's commit, with ``+dirty`` when tracked files other than the benchmarks' own
    output (bench/results, docs/performance.md, docs/img) differ from it."""
    output = (":!bench/results", ":!docs/performance.md", ":!docs/img")
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *output)
    return _git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")


def _git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return proc.stdout.strip()


def versions(cluster: Cluster | None) -> dict[str, Any]:
    from importlib.metadata import version

    found: dict[str, Any] = {
        "python": platform.python_version(),
        "wasmtime_py": version("wasmtime"),
        "wasmlet": __version__,
        "wasmlet_commit": git_commit(),
    }
    if cluster is not None:
        proc = subprocess.run(
            [str(cluster.kubectl), "--kubeconfig", str(cluster.kubeconfig), "version", "-o", "json"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        with contextlib.suppress(ValueError):
            info = json.loads(proc.stdout)
            found["kubernetes_server"] = info.get("serverVersion", {}).get("gitVersion")
            found["kubectl"] = info.get("clientVersion", {}).get("gitVersion")
    return found


# -- modules and the registry --------------------------------------------------------------


def wat(name: str, **params: int | str) -> str:
    """``bench/modules/<name>.wat`` with its ``@KEY@`` placeholders filled in."""
    text = (MODULES / f"{name}.wat").read_text()
    for key, value in params.items():
        text = text.replace(f"@{key.upper()}@", str(value))
    missing = sorted(set(re.findall(r"@([A-Z_]+)@", text)))
    if missing:
        raise BenchError(f"module {name}: no value for {missing}")
    return text


def wasm(name: str, **params: int | str) -> bytes:
    return bytes(wasmtime.wat2wasm(wat(name, **params)))


def with_nonce(module: bytes, nonce: str) -> bytes:
    """``module`` with a custom section holding ``nonce``: other bytes, same code (a cache miss)."""
    name = b"bench-nonce"
    payload = bytes([len(name)]) + name + nonce.encode()
    return module + b"\x00" + _leb128(len(payload)) + payload


def _leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def start_func(instance: wasmtime.Instance, store: wasmtime.Store) -> wasmtime.Func:
    """The module's ``_start``."""
    func = instance.exports(store)["_start"]
    if not isinstance(func, wasmtime.Func):
        raise BenchError("_start is not a function")
    return func


def registry_up() -> bool:
    try:
        return httpx.get(f"http://{REGISTRY}/v2/", timeout=5).status_code in {200, 401}
    except httpx.HTTPError:
        return False


def ensure_registry(log: Callable[[str], None]) -> None:
    if not registry_up():
        log(f"registry {REGISTRY} is down: running playbooks/registry.yml")
        run_playbook("registry.yml")


def push(name: str, module: bytes, workdir: Path) -> str:
    """Push ``module`` to a new repository of the local registry; its reference."""
    path = workdir / f"{unique(name)}.wasm"
    path.write_bytes(module)
    ref = f"{REGISTRY}/bench/{path.stem}:v1"
    push_module(ref, path, insecure_registries={REGISTRY})
    return ref


# -- Ansible and control planes ------------------------------------------------------------


def run_playbook(playbook: str, extra_vars: Mapping[str, Any] | None = None, timeout: float = 1200) -> float:
    """Run ``playbooks/<playbook>`` against the local inventory; the seconds it took."""
    cmd = [str(BIN / "ansible-playbook"), "-i", str(ROOT / "inventories" / "local"), f"playbooks/{playbook}"]
    if extra_vars:
        cmd += ["-e", json.dumps(dict(extra_vars))]
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    started = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, check=False, env=env, timeout=timeout
    )
    if proc.returncode != 0:
        raise BenchError(
            f"{playbook} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
        )
    return time.monotonic() - started


def kubernetes_version() -> str:
    defaults = yaml.safe_load((ROOT / "roles" / "control_plane" / "defaults" / "main.yml").read_text())
    return str(defaults["control_plane_kubernetes_version"])


COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


@dataclass(frozen=True)
class Cluster:
    kind: str  # "bench": a control plane of its own; "main": the one in ~/.wasmlet
    control_plane_dir: Path
    kubectl: Path
    tuning: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    bring_up_s: float | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane_dir / "admin.kubeconfig"

    def admin(self, timeout: float = 60.0) -> Client:
        return Client.from_kubeconfig(self.kubeconfig, timeout)

    def component_pids(self) -> dict[str, int]:
        """The control plane's processes, found by their flags naming this cluster's directory."""
        marker = str(self.control_plane_dir) + "/"
        found: dict[str, int] = {}
        for pid in pids_where(lambda argv: any(marker in arg for arg in argv[1:])):
            base = Path(cmdline(pid)[0]).name
            if base in COMPONENTS:
                found[base] = pid
        return found

    def healthy(self) -> bool:
        if not self.kubeconfig.exists():
            return False
        try:
            with self.admin(timeout=5) as client:
                return bool(client.get("/readyz") == "ok")
        except (ApiError, httpx.HTTPError, OSError, ValueError):
            return False


BENCH_CONTROL_PLANE_VARS: dict[str, Any] = {
    "control_plane_cluster_name": "wasmlet-bench",
    # Pod and Service ranges of its own (the main cluster's pods may listen at the same ports),
    # and no kube-proxy: one per host, the main cluster's.
    "control_plane_cluster_cidr": "10.248.0.0/16",
    "control_plane_service_cidr": "10.114.0.0/16",
    "control_plane_kube_proxy": False,
    "control_plane_service_manager": "supervise",
    # Ports no test or molecule scenario uses (molecule default has 26443/2238x/3025x).
    "control_plane_apiserver_port": 36443,
    "control_plane_etcd_client_port": 32379,
    "control_plane_etcd_peer_port": 32380,
    "control_plane_etcd_metrics_port": 32381,
    "control_plane_controller_manager_port": 33257,
    "control_plane_scheduler_port": 33259,
}

# What a kubelet density benchmark tunes so that the control plane's client-side rate limits
# are not what is measured (their defaults: scheduler 50 QPS / burst 100, controller-manager
# 20 / 30; apiserver 400 read + 200 mutating requests in flight).
BENCH_TUNING: dict[str, dict[str, Any]] = {
    "control_plane_scheduler_extra_args": {"kube-api-qps": 1000, "kube-api-burst": 2000},
    "control_plane_controller_manager_extra_args": {"kube-api-qps": 200, "kube-api-burst": 400},
    "control_plane_apiserver_extra_args": {
        "max-requests-inflight": 1000,
        "max-mutating-requests-inflight": 500,
    },
}


def bench_home() -> Path:
    return Path.home() / ".cache" / "wasmlet" / "bench" / "control-plane"


@contextlib.contextmanager
def bench_control_plane(log: Callable[[str], None], keep: bool = False) -> Iterator[Cluster]:
    """A control plane of the benchmarks' own (own state directory and ports, the shared
    Kubernetes binaries), tuned as :data:`BENCH_TUNING`; stopped and deleted afterwards."""
    home = bench_home()
    extra = {
        **BENCH_CONTROL_PLANE_VARS,
        **BENCH_TUNING,
        "control_plane_home": str(home),
        "control_plane_bin_dir": str(paths.bin_dir(kubernetes_version())),
    }
    try:
        log(
            f"starting the bench control plane in {home} (apiserver :{extra['control_plane_apiserver_port']})"
        )
        took = run_playbook("cluster.yml", extra)
        log(f"bench control plane up in {took:.0f}s")
        yield Cluster(
            "bench", home / "cluster", paths.bin_dir(kubernetes_version()) / "kubectl", BENCH_TUNING, took
        )
    finally:
        if not keep:
            log("removing the bench control plane")
            run_playbook("cluster.yml", {**extra, "control_plane_state": "absent"})


def main_cluster(log: Callable[[str], None]) -> Cluster:
    """The cluster ``make up`` runs in ~/.wasmlet, brought up by its playbook if it is not healthy."""
    kubectl = paths.bin_dir(kubernetes_version()) / "kubectl"
    cluster = Cluster("main", paths.cluster_dir(), kubectl)
    if not cluster.healthy():
        log("the main cluster is not healthy: running playbooks/cluster.yml")
        took = run_playbook("cluster.yml")
        cluster = Cluster("main", paths.cluster_dir(), kubectl, bring_up_s=took)
    return cluster


# -- wasmlet nodes -------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    ip: str
    port: int
    data_dir: Path
    process: subprocess.Popen[bytes]
    output: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return self.output.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _delete_quietly(client: Client, path: str) -> None:
    with contextlib.suppress(ApiError, httpx.HTTPError):
        client.delete(path)


def _bench_only(admin: Client, name: str) -> None:
    """Taint node ``name`` so that only the bench's pods run there. Other wasm pods of the cluster
    (a demo Deployment left Pending without a node, say) would land on it and skew every figure;
    NoExecute has the taint-eviction controller delete any bound before the taint."""
    node = admin.get(f"/api/v1/nodes/{name}")
    taints = [t for t in node["spec"].get("taints", []) if t["key"] != BENCH_TAINT]
    ours = [{"key": BENCH_TAINT, "value": "only", "effect": effect} for effect in ("NoSchedule", "NoExecute")]
    admin.patch(f"/api/v1/nodes/{name}", {"spec": {"taints": [*taints, *ours]}})


def _others_on(admin: Client, name: str) -> list[str]:
    """Pods bound to node ``name`` that do not tolerate the bench's taint."""
    pods = admin.get("/api/v1/pods", {"fieldSelector": f"spec.nodeName={name}"})["items"]
    return [
        f"{p['metadata']['namespace']}/{p['metadata']['name']}"
        for p in pods
        if not any(t.get("key") == BENCH_TAINT for t in p["spec"].get("tolerations", []))
    ]


def _node_ready(admin: Client, name: str) -> bool:
    try:
        node = admin.get(f"/api/v1/nodes/{name}")
    except ApiError:
        return False
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in node.get("status", {}).get("conditions", [])
    )


def _approve(admin: Client, csr_name: str) -> bool:
    try:
        csr = admin.get(f"/apis/certificates.k8s.io/v1/certificatesigningrequests/{csr_name}")
    except ApiError:
        return False
    csr["status"] = {
        "conditions": [
            {
                "type": "Approved",
                "status": "True",
                "reason": "Benchmark",
                "message": "approved by wasmlet bench",
            }
        ]
    }
    admin.put(f"/apis/certificates.k8s.io/v1/certificatesigningrequests/{csr_name}/approval", csr)
    return True


@contextlib.contextmanager
def running_node(
    cluster: Cluster,
    admin: Client,
    workdir: Path,
    prefix: str,
    *,
    max_pods: int = 110,
    ip: str = NODE_IP,
    patch: str | None = None,
    flags: tuple[str, ...] = (),
) -> Iterator[Node]:
    """A real ``wasmlet`` process joined to ``cluster`` by TLS bootstrap, its serving certificate
    approved, pulling from the local registry; stopped and its Node deleted afterwards.
    ``flags``: more of wasmlet's flags.

    ``patch`` (for experiments, not a wasmlet setting): Python run in the node's process before
    wasmlet's ``main``, e.g. ``wasmlet.pod.controller.WORKERS = 16``.
    """
    name = unique(prefix)
    data_dir = workdir / name
    token = tokens.create(admin, description="wasmlet benchmark node")
    tokens.write_bootstrap_kubeconfig(
        data_dir / "config" / "bootstrap.conf", kubeconfig.load(cluster.kubeconfig), token.token
    )
    output = workdir / f"{name}.out"
    command = [str(BIN / "wasmlet")]
    if patch is not None:
        imports = "import sys, wasmlet.cli, wasmlet.pod.controller"
        source = f"{imports}\n{patch}\nsys.exit(wasmlet.cli.main(sys.argv[1:]))\n"
        command = [sys.executable, "-c", source]
    argv = [
        *command,
        *("--node-name", name, "--hostname", name, "--node-ip", ip, "--port", "10250"),
        *("--data-dir", str(data_dir), "--max-pods", str(max_pods), "--insecure-registries", REGISTRY),
        *flags,
    ]
    with output.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    node = Node(name, ip, 10250, data_dir, process, output)

    def up(probe: Callable[[], bool]) -> Callable[[], bool]:
        def check() -> bool:
            if process.poll() is not None:
                raise BenchError(
                    f"wasmlet node {name} exited ({process.returncode}):\n{node.log_text()[-3000:]}"
                )
            return probe()

        return check

    try:
        wait_for(f"node {name} to be Ready", up(lambda: _node_ready(admin, name)), timeout=90)
        wait_for(f"the serving CSR {name}-tls", up(lambda: _approve(admin, f"{name}-tls")), timeout=60)
        wait_for("the kubelet API", up(lambda: "kubelet API on https://" in node.log_text()), timeout=60)
        _bench_only(admin, name)
        wait_for(f"other pods to leave node {name}", up(lambda: not _others_on(admin, name)), timeout=120)
        yield node
    finally:
        code = node.stop()
        if code != 0:
            panics = node.log_text().count("panicked at")
            OBSERVATIONS.append(
                f"wasmlet node {name} exited with {code} on SIGTERM"
                + (f" after {panics} Rust panics in wasmtime's tokio worker threads" if panics else "")
                + f" (its output: {node.output})"
            )
        _delete_quietly(admin, f"/api/v1/nodes/{name}")
        _delete_quietly(admin, f"/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}-tls")
        _delete_quietly(admin, f"/api/v1/namespaces/kube-system/secrets/bootstrap-token-{token.token_id}")


# -- pods ----------------------------------------------------------------------------------

BENCH_TAINT = "wasmlet.dev/bench"  # on the bench's nodes: no other pod runs there
TOLERATIONS = [
    {"key": BENCH_TAINT, "operator": "Exists"},
    {"key": "node.kubernetes.io/network-unavailable", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "kubernetes.io/arch", "operator": "Equal", "value": "wasm32-wasi", "effect": "NoExecute"},
    {"key": "kubernetes.io/arch", "operator": "Equal", "value": "wasm32-wasi", "effect": "NoSchedule"},
]


def pod_manifest(
    name: str,
    node: str,
    image: str,
    *,
    args: Sequence[str] = (),
    restart: str = "Always",
    bind: bool = False,
) -> dict[str, Any]:
    """A pod for ``node`` with the seed's tolerations; ``bind`` sets spec.nodeName (no scheduler)."""
    spec: dict[str, Any] = {
        "nodeSelector": {"kubernetes.io/hostname": node},
        "tolerations": TOLERATIONS,
        "restartPolicy": restart,
        "terminationGracePeriodSeconds": 0,
        "containers": [
            {
                "name": "main",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                **({"args": list(args)} if args else {}),
            }
        ],
    }
    if bind:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": spec,
    }


def _namespace_ready(admin: Client, namespace: str) -> bool:
    try:
        admin.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/default")
        admin.get(f"/api/v1/namespaces/{namespace}/configmaps/kube-root-ca.crt")
    except ApiError:
        return False
    return True


def delete_pods(admin: Client, namespace: str) -> None:
    """Delete every pod of ``namespace`` at once (grace 0: the objects go, the node stops them)."""
    with contextlib.suppress(ApiError, httpx.HTTPError):
        admin.request(
            "DELETE",
            f"/api/v1/namespaces/{namespace}/pods",
            {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0},
        )


@contextlib.contextmanager
def namespace(admin: Client, prefix: str) -> Iterator[str]:
    """A new namespace with its default ServiceAccount and root CA ConfigMap; deleted afterwards."""
    name = unique(prefix)
    admin.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    try:
        wait_for(f"namespace {name} to be usable", lambda: _namespace_ready(admin, name), timeout=60)
        yield name
    finally:
        delete_pods(admin, name)
        _delete_quietly(admin, f"/api/v1/namespaces/{name}")


def create_pods(
    cluster: Cluster,
    namespace: str,
    manifests: Sequence[dict[str, Any]],
    watcher: PodWatcher,
    workers: int = 16,
) -> float:
    """POST ``manifests`` from ``workers`` threads at once; the seconds until the last POST returned.

    The watcher gets each pod's creation time (just before its POST) as the start of its clock.
    """
    from concurrent.futures import ThreadPoolExecutor

    clients = [cluster.admin() for _client in range(min(workers, len(manifests)) or 1)]
    started = time.monotonic()

    def create(index: int) -> None:
        manifest = manifests[index]
        watcher.mark_created(manifest["metadata"]["name"])
        clients[index % len(clients)].post(f"/api/v1/namespaces/{namespace}/pods", manifest)

    try:
        with ThreadPoolExecutor(max_workers=len(clients)) as pool:
            list(pool.map(create, range(len(manifests))))
    finally:
        for client in clients:
            client.close()
    return time.monotonic() - started


@dataclass
class PodTimes:
    """When the watch saw each step of one pod (time.monotonic())."""

    created: float | None = None  # just before its POST (set by the creator)
    seen: float | None = None
    bound: float | None = None  # spec.nodeName set
    started: float | None = None  # its container running or already terminated
    running: float | None = None  # phase Running
    finished: float | None = None  # phase Succeeded or Failed
    deleted: float | None = None
    phase: str = ""
    status: dict[str, Any] = field(default_factory=dict)


class PodWatcher:
    """Watches one namespace's pods and records when each step was first observed."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.times: dict[str, PodTimes] = {}
        self.cond = threading.Condition()
        self.events = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failure: str | None = None

    def __enter__(self) -> PodWatcher:
        client = self.cluster.admin()
        listing = client.get(f"/api/v1/namespaces/{self.namespace}/pods")
        for pod in listing.get("items") or []:
            self._record("ADDED", pod, time.monotonic())
        version = str(listing["metadata"]["resourceVersion"])
        self._thread = threading.Thread(
            target=self._loop, args=(client, version), name="bench-watch", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()

    def _loop(self, client: Client, version: str) -> None:
        path = f"/api/v1/namespaces/{self.namespace}/pods"
        try:
            while not self._stop.is_set():
                for event in client.watch(path, {}, version, timeout_seconds=15):
                    obj = event["object"]
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if event["type"] != "BOOKMARK":
                        self._record(event["type"], obj, time.monotonic())
                    if self._stop.is_set():
                        break
        except Exception as exc:  # reported to whoever waits
            with self.cond:
                self.failure = f"watch failed: {exc}"
                self.cond.notify_all()
        finally:
            client.close()

    def _record(self, kind: str, pod: dict[str, Any], now: float) -> None:
        name = pod["metadata"]["name"]
        status = pod.get("status") or {}
        phase = status.get("phase", "")
        states = [s.get("state") or {} for s in status.get("containerStatuses") or []]
        with self.cond:
            self.events += 1
            t = self.times.setdefault(name, PodTimes())
            t.seen = t.seen or now
            if pod.get("spec", {}).get("nodeName") and t.bound is None:
                t.bound = now
            if states and all("running" in s or "terminated" in s for s in states) and t.started is None:
                t.started = now
            if phase == "Running" and t.running is None:
                t.running = now
            if phase in {"Succeeded", "Failed"} and t.finished is None:
                t.finished = now
            if kind == "DELETED":
                t.deleted = now
            t.phase, t.status = phase, status
            self.cond.notify_all()

    def mark_created(self, name: str) -> None:
        """The clock of pod ``name`` starts now (a pod created again under the same name starts over)."""
        with self.cond:
            self.times[name] = PodTimes(created=time.monotonic())

    def wait(self, what: str, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until ``predicate()`` (called with the lock held) is true."""
        with self.cond:
            ok = self.cond.wait_for(lambda: predicate() or self.failure is not None, timeout)
            if self.failure is not None:
                raise BenchError(self.failure)
            if not ok:
                raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")

    def reached(self, step: str, name: str) -> Callable[[], bool]:
        """A predicate for :meth:`wait`: pod ``name`` has reached ``step``."""
        return lambda: self.count(step, [name]) == 1

    def count(self, step: str, names: Sequence[str] | None = None) -> int:
        """How many pods (of ``names``) have reached ``step`` (a :class:`PodTimes` field)."""
        keys = self.times.keys() if names is None else names
        return sum(1 for n in keys if n in self.times and getattr(self.times[n], step) is not None)

    def durations(self, names: Sequence[str], start: str, end: str) -> list[float]:
        """Seconds from ``start`` to ``end`` for each of ``names`` that has both."""
        with self.cond:
            out = []
            for n in names:
                t = self.times.get(n)
                a = getattr(t, start) if t else None
                b = getattr(t, end) if t else None
                if a is not None and b is not None:
                    out.append(b - a)
            return out


def settle_threads(pid: int, timeout: float = 30.0, quiet: float = 1.0) -> int:
    """``pid``'s thread count once it has not changed for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = thread_count(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = thread_count(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise BenchError(f"pid {pid}'s thread count did not settle in {timeout:.0f}s (last {last})")


def wait_threads(pid: int, at_most: int, timeout: float) -> int:
    """Wait until ``pid`` runs at most ``at_most`` threads (its module threads are gone)."""
    wait_for(f"pid {pid} to drop to {at_most} threads", lambda: thread_count(pid) <= at_most, timeout, 0.2)
    return thread_count(pid)


# -- http streaming and profiling ------------------------------------------------------------


def http_client(cluster: Cluster, timeout: httpx.Timeout) -> httpx.Client:
    """An httpx client with the cluster's admin credentials (for streaming requests)."""
    creds = kubeconfig.load(cluster.kubeconfig)
    headers = {"Authorization": f"Bearer {creds.token}"} if creds.token else {}
    return httpx.Client(base_url=creds.server, verify=creds.ssl_context(), headers=headers, timeout=timeout)


def py_spy() -> str | None:
    candidate = BIN / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


class Profiler:
    """``py-spy record`` on a process, in raw (collapsed stacks) form, until :meth:`stop`."""

    def __init__(
        self, pid: int, output: Path, rate: int = 50, *, idle: bool = False, nonblocking: bool = True
    ) -> None:
        exe = py_spy()
        if exe is None:
            raise BenchError("py-spy is not installed (pip install -e '.[bench]')")
        argv = [
            exe,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--output",
            str(output),
            "--rate",
            str(rate),
        ]
        if idle:
            argv.append("--idle")
        if nonblocking:  # do not stop the node for every sample: it runs ~1000 threads
            argv.append("--nonblocking")
        self.output = output
        self.log = output.with_suffix(".log")
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def stop(self) -> Path:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self.output.exists():
            raise BenchError(f"py-spy wrote no profile: {self.log.read_text(errors='replace')[-2000:]}")
        return self.output


def collapsed_stacks(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw output: one ``frame;frame;... count`` line per distinct stack (root first)."""
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        head, _space, count = line.rpartition(" ")
        if head and count.isdigit():
            stacks.append((head.split(";"), int(count)))
    return stacks
