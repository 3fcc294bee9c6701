#!/usr/bin/python
# Copyright: wasmlet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: oci_info
short_description: Inspect a wasm module (or any image) in an OCI registry
version_added: "0.1.0"
description:
  - Fetches the manifest O(reference) points at (following an image index to its wasm platform entry)
    and reports its digest and media types, the wasm layer, and whether it is a wasm module at all.
  - Never changes anything; runs the same in check mode.
  - Fails with the registry's cause when the reference does not exist (for example C(manifest unknown
    (HTTP 404))) or the registry cannot be reached.
author:
  - wasmlet contributors (@wasmlet)
requirements:
  - wasmlet (the Python package of this collection) on the managed host
options:
  reference:
    description: Reference to inspect, for example C(127.0.0.1:5000/simpleserver:v1.0.0).
    type: str
    required: true
extends_documentation_fragment:
  - wasmlet.kube.registry
  - wasmlet.kube.attributes
"""

EXAMPLES = r"""
- name: Inspect the demo module
  wasmlet.kube.oci_info:
    reference: 127.0.0.1:5000/simpleserver:v1.0.0
  register: simpleserver

- name: Refuse anything that is not a wasm module
  ansible.builtin.assert:
    that: simpleserver.is_wasm
"""

RETURN = r"""
digest:
  description: Digest of the manifest (or index) the reference points at.
  returned: success
  type: str
  sample: sha256:2297936b402cc9ff57781489b6e414b9a688ad5a1fb19c0ecb5fc5e2e7430f5c
media_type:
  description: Media type of that manifest (or index).
  returned: success
  type: str
  sample: application/vnd.oci.image.manifest.v1+json
manifest_digest:
  description: Digest of the image manifest described below (differs from RV(digest) behind an index).
  returned: success
  type: str
  sample: sha256:2297936b402cc9ff57781489b6e414b9a688ad5a1fb19c0ecb5fc5e2e7430f5c
config_media_type:
  description: Media type of the image config (empty when the manifest has none).
  returned: success
  type: str
  sample: application/vnd.wasm.config.v1+json
is_wasm:
  description: Whether the image holds a wasm layer (wasm-to-oci or CNCF wasm artifact) wasmlet can run.
  returned: success
  type: bool
  sample: true
layer_media_type:
  description: Media type of the wasm layer; of the first layer when RV(is_wasm) is false (empty if none).
  returned: success
  type: str
  sample: application/vnd.wasm.content.layer.v1+wasm
layer_digest:
  description: Digest of that layer (empty if none).
  returned: success
  type: str
  sample: sha256:6e1f0b5d7c3b9d0c8a7f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b
layer_size:
  description: Size of that layer in bytes (0 if none).
  returned: success
  type: int
  sample: 1843
layers:
  description: Every layer of the manifest.
  returned: success
  type: list
  elements: dict
  sample:
    - mediaType: application/vnd.wasm.content.layer.v1+wasm
      digest: sha256:6e1f0b5d7c3b9d0c8a7f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b
      size: 1843
not_wasm_cause:
  description: Why the image is not a wasm module.
  returned: when RV(is_wasm) is false
  type: str
  sample: "no layer of media type application/vnd.wasm.content.layer.v1+wasm or application/wasm; ..."
"""

from collections.abc import Mapping

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.wasmlet.kube.plugins.module_utils.registry import (
    REGISTRY_ARGUMENT_SPEC,
    REGISTRY_REQUIRED_TOGETHER,
    registry_access,
)
from ansible_collections.wasmlet.kube.plugins.module_utils.wasmlet import require_wasmlet


def main():
    module = AnsibleModule(
        argument_spec=dict(
            reference=dict(type="str", required=True),
            **REGISTRY_ARGUMENT_SPEC,
        ),
        required_together=REGISTRY_REQUIRED_TOGETHER,
        supports_check_mode=True,
    )
    require_wasmlet(module)
    from wasmlet.oci.client import RegistryClient
    from wasmlet.oci.errors import NotWasmError, RegistryError
    from wasmlet.oci.manifest import manifest_kind, select_platform, select_wasm_layer
    from wasmlet.oci.reference import parse_reference

    p = module.params
    not_wasm = None
    try:
        ref = parse_reference(p["reference"])
        auth, options = registry_access(p, ref.registry)
        with RegistryClient.for_registry(ref.registry, auth, options, action="inspect") as client:
            top = client.get_manifest(ref)
            manifest = top
            if manifest_kind(top.media_type, top.data) == "index":
                try:
                    entry = select_platform(top.data, reference=str(ref), registry=client.registry)
                except NotWasmError as exc:
                    not_wasm = exc.cause
                else:
                    manifest = client.get_manifest(ref, entry.digest)
            layer = None
            if not_wasm is None:
                try:
                    layer = select_wasm_layer(manifest.data, reference=str(ref), registry=client.registry)
                except NotWasmError as exc:
                    not_wasm = exc.cause
    except (RegistryError, OSError, ValueError) as exc:
        module.fail_json(msg=f"inspect {p['reference']}: {exc}")

    config = manifest.data.get("config")
    raw_layers = manifest.data.get("layers")
    layers = [
        {
            "mediaType": item.get("mediaType", ""),
            "digest": item.get("digest", ""),
            "size": item.get("size", 0),
        }
        for item in (raw_layers if isinstance(raw_layers, list) else [])
        if isinstance(item, Mapping)
    ]
    if layer is not None:
        layer_info = (layer.media_type, layer.digest, layer.size)
    elif layers:
        layer_info = (str(layers[0]["mediaType"]), str(layers[0]["digest"]), layers[0]["size"])
    else:
        layer_info = ("", "", 0)
    result = dict(
        changed=False,
        digest=top.digest,
        media_type=top.media_type,
        manifest_digest=manifest.digest,
        config_media_type=str(config.get("mediaType", "")) if isinstance(config, Mapping) else "",
        is_wasm=not_wasm is None,
        layer_media_type=layer_info[0],
        layer_digest=layer_info[1],
        layer_size=layer_info[2],
        layers=layers,
    )
    if not_wasm is not None:
        result["not_wasm_cause"] = not_wasm
    module.exit_json(**result)


if __name__ == "__main__":
    main()
