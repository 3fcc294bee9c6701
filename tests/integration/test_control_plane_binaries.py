"""The control_plane role's download path: release binaries fetched and sha256-verified.

The release servers are not reachable here, so a local HTTP server on loopback serves a
tree laid out like dl.k8s.io and the etcd release page (small stand-in files: the test is
about fetching and verifying, not running them).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_playbook_file

pytestmark = pytest.mark.integration

K8S_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
KUBE_BINARIES = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kube-proxy"]


def _release_tree(root: Path) -> None:
    kube = root / "k8s" / K8S_VERSION / "bin" / "linux" / "amd64"
    kube.mkdir(parents=True)
    for name in KUBE_BINARIES:
        data = f"#!/bin/sh\necho {name} {K8S_VERSION}\n".encode()
        (kube / name).write_bytes(data)
        (kube / f"{name}.sha256").write_text(hashlib.sha256(data).hexdigest())
    etcd = root / "etcd" / ETCD_VERSION
    etcd.mkdir(parents=True)
    tarball = f"etcd-{ETCD_VERSION}-linux-amd64.tar.gz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("etcd", "etcdctl", "README.md"):
            data = f"#!/bin/sh\necho {name}\n".encode()
            info = tarfile.TarInfo(f"etcd-{ETCD_VERSION}-linux-amd64/{name}")
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    (etcd / tarball).write_bytes(buf.getvalue())
    (etcd / "SHA256SUMS").write_text(f"{hashlib.sha256(buf.getvalue()).hexdigest()}  {tarball}\n")


@pytest.fixture
def release_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    _release_tree(root)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="release-server", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def _playbook(tmp_path: Path, base: str, bin_dir: Path) -> Path:
    path = tmp_path / "binaries.yml"
    path.write_text(f"""---
- name: Provide control-plane binaries by download
  hosts: localhost
  gather_facts: true
  gather_subset: [min]
  tasks:
    - name: Provide the binaries
      ansible.builtin.include_role:
        name: wasmlet.kube.control_plane
        tasks_from: binaries.yml
      vars:
        control_plane_binaries_source: download
        control_plane_download_base_url: {base}/k8s
        control_plane_etcd_download_base_url: {base}/etcd
        control_plane_bin_dir: {bin_dir}
        control_plane_home: {bin_dir.parent.parent}
""")
    return path


def test_download_fetches_release_binaries_verified_by_sha256(
    release_server: tuple[str, Path], tmp_path: Path
) -> None:
    base, root = release_server
    bin_dir = tmp_path / "home" / "bin" / K8S_VERSION
    out = run_playbook_file(_playbook(tmp_path, base, bin_dir))
    assert "changed=" in out
    served = root / "k8s" / K8S_VERSION / "bin" / "linux" / "amd64"
    for name in KUBE_BINARIES:
        assert (bin_dir / name).read_bytes() == (served / name).read_bytes()
        assert (bin_dir / name).stat().st_mode & 0o777 == 0o755
    assert (bin_dir / "etcd").read_bytes() == b"#!/bin/sh\necho etcd\n"
    assert not (bin_dir / "etcdctl").exists()
    assert (tmp_path / "home" / "bin" / "kubectl").resolve() == bin_dir / "kubectl"
    # Cached: a second run downloads nothing.
    again = run_playbook_file(_playbook(tmp_path, base, bin_dir))
    assert "changed=0" in again


def test_download_with_a_wrong_checksum_fails_and_installs_nothing(
    release_server: tuple[str, Path], tmp_path: Path
) -> None:
    base, root = release_server
    (root / "k8s" / K8S_VERSION / "bin" / "linux" / "amd64" / "kube-scheduler.sha256").write_text("0" * 64)
    bin_dir = tmp_path / "home" / "bin" / K8S_VERSION
    with pytest.raises(AssertionError) as err:
        run_playbook_file(_playbook(tmp_path, base, bin_dir))
    assert "checksum" in str(err.value).lower()
    assert not (bin_dir / "kube-scheduler").exists()
