#!/usr/bin/python
# Copyright: wasmlet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: oci_pull
short_description: Pull a wasm module from an OCI registry into a local file
version_added: "0.1.0"
description:
  - Resolves O(reference) (a wasm-to-oci or CNCF wasm artifact, through an image index if need be) and
    writes its wasm layer to O(dest), atomically and with mode C(0644).
  - The registry is always asked (the manifest is resolved on every run); the layer is downloaded only
    when O(dest) does not already hold the bytes of the remote layer (same digest), in which case
    C(changed) is false.
  - The layer is verified against its digest and size before O(dest) is replaced.
author:
  - wasmlet contributors (@wasmlet)
requirements:
  - wasmlet (the Python package of this collection) on the managed host
options:
  reference:
    description: Module to pull, for example C(127.0.0.1:5000/simpleserver:v1.0.0) or C(repo@sha256:...).
    type: str
    required: true
  dest:
    description: Path of the C(.wasm) file to write. Its directory must exist.
    type: path
    required: true
extends_documentation_fragment:
  - wasmlet.kube.registry
  - wasmlet.kube.attributes
notes:
  - In check mode the manifest is resolved and O(dest) compared with the remote layer digest; nothing is
    downloaded or written.
"""

EXAMPLES = r"""
- name: Pull the demo module
  wasmlet.kube.oci_pull:
    reference: 127.0.0.1:5000/simpleserver:v1.0.0
    dest: /tmp/simpleserver.wasm

- name: Pull from a registry with credentials and a private CA
  wasmlet.kube.oci_pull:
    reference: registry.example.com:5001/apps/hello:v2
    dest: ~/hello.wasm
    ca_file: /etc/wasmlet/registry-ca.pem
    username: ci
    password: "{{ registry_password }}"
"""

RETURN = r"""
digest:
  description: Digest of the manifest (or index) the reference points at.
  returned: success
  type: str
  sample: sha256:2297936b402cc9ff57781489b6e414b9a688ad5a1fb19c0ecb5fc5e2e7430f5c
layer_digest:
  description: Digest of the wasm layer (of the bytes written to O(dest)).
  returned: success
  type: str
  sample: sha256:6e1f0b5d7c3b9d0c8a7f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b
size:
  description: Size of the wasm layer in bytes.
  returned: success
  type: int
  sample: 1843
media_type:
  description: Media type of the wasm layer.
  returned: success
  type: str
  sample: application/vnd.wasm.content.layer.v1+wasm
dest:
  description: The file written.
  returned: success
  type: str
  sample: /tmp/simpleserver.wasm
"""

import hashlib
import tempfile
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.wasmlet.kube.plugins.module_utils.registry import (
    REGISTRY_ARGUMENT_SPEC,
    REGISTRY_REQUIRED_TOGETHER,
    registry_access,
)
from ansible_collections.wasmlet.kube.plugins.module_utils.wasmlet import require_wasmlet


def _file_digest(path, algorithm):
    """``algorithm:hex`` of the file at ``path``, or None when there is no such file."""
    try:
        hasher = hashlib.new(algorithm)
    except ValueError:
        return None
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(65536), b""):
                hasher.update(chunk)
    except FileNotFoundError:
        return None
    return f"{algorithm}:{hasher.hexdigest()}"


def main():
    module = AnsibleModule(
        argument_spec=dict(
            reference=dict(type="str", required=True),
            dest=dict(type="path", required=True),
            **REGISTRY_ARGUMENT_SPEC,
        ),
        required_together=REGISTRY_REQUIRED_TOGETHER,
        supports_check_mode=True,
    )
    require_wasmlet(module)
    from wasmlet import fsutil
    from wasmlet.oci.client import RegistryClient
    from wasmlet.oci.errors import RegistryError
    from wasmlet.oci.pull import pull_module
    from wasmlet.oci.reference import parse_reference
    from wasmlet.oci.store import ModuleStore

    p = module.params
    dest = Path(p["dest"])
    if dest.is_dir():
        module.fail_json(msg=f"pull {p['reference']} to {dest}: dest is a directory, not a file path")
    if not dest.parent.is_dir():
        module.fail_json(msg=f"pull {p['reference']} to {dest}: directory {dest.parent} does not exist")
    try:
        ref = parse_reference(p["reference"])
        auth, options = registry_access(p, ref.registry)
        with RegistryClient.for_registry(ref.registry, auth, options) as client:
            resolved = client.resolve_module(ref)
            layer = resolved.layer
            current = _file_digest(dest, layer.digest.partition(":")[0])
            mode_ok = dest.exists() and (dest.stat().st_mode & 0o777) == 0o644
            result = dict(
                digest=resolved.digest,
                layer_digest=layer.digest,
                size=layer.size,
                media_type=layer.media_type,
                dest=str(dest),
            )
            if current == layer.digest and mode_ok:
                module.exit_json(changed=False, **result)
            if module.check_mode:
                module.exit_json(changed=True, **result)
            if current == layer.digest:
                dest.chmod(0o644)
                module.exit_json(changed=True, **result)
            with tempfile.TemporaryDirectory(prefix="wasmlet-oci-pull-") as tmp:
                pulled = pull_module(client, ref, ModuleStore(Path(tmp)))
                fsutil.write_atomic(dest, pulled.path.read_bytes(), 0o644)
    except (RegistryError, OSError, ValueError) as exc:
        module.fail_json(msg=f"pull {p['reference']} to {dest}: {exc}")
    module.exit_json(changed=True, **result)


if __name__ == "__main__":
    main()
