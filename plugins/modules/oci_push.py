#!/usr/bin/python
# Copyright: wasmlet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: oci_push
short_description: Push a wasm module to an OCI registry (wasm-to-oci or CNCF wasm artifact)
version_added: "0.1.0"
description:
  - Pushes O(path) as O(reference), with wasm-to-oci media types (what Krustlet pulls) or as a CNCF
    TAG-Runtime wasm artifact. Blobs the registry has are not uploaded again, and C(changed) is false when
    the tag already points at the same manifest.
  - O(path) may be WebAssembly text (a C(.wat) file), converted to binary wasm with wasmtime's C(wat2wasm)
    before the push; the converted bytes are deterministic, so pushing the same text again changes nothing.
author:
  - wasmlet contributors (@wasmlet)
requirements:
  - wasmlet (the Python package of this collection) on the managed host
options:
  path:
    description:
      - The module file on the managed host, binary wasm (a C(.wasm) file, starting with the C(\0asm) magic)
        or WebAssembly text (a file named C(*.wat), any case of the suffix), which is converted first.
      - Anything else (a file not named C(*.wat) that is not binary wasm) fails the task, naming the file.
    type: path
    required: true
  reference:
    description: Target, for example C(127.0.0.1:5000/simpleserver:v1.0.0).
    type: str
    required: true
  media_type:
    description: Manifest flavour.
    type: str
    choices: [wasm-to-oci, cncf]
    default: wasm-to-oci
extends_documentation_fragment:
  - wasmlet.kube.registry
  - wasmlet.kube.attributes
"""

EXAMPLES = r"""
- name: Push the demo module (a loopback registry in plain HTTP needs no insecure)
  wasmlet.kube.oci_push:
    path: ~/.wasmlet/build/simpleserver.wasm
    reference: 127.0.0.1:5000/simpleserver:v1.0.0

- name: Push a module written in WebAssembly text to a plain-HTTP registry elsewhere
  wasmlet.kube.oci_push:
    path: /srv/modules/hello.wat
    reference: 192.0.2.10:5000/hello:v1
    insecure: true
"""

RETURN = r"""
digest:
  description: Manifest digest the tag points at.
  returned: success
  type: str
  sample: sha256:2297936b402cc9ff57781489b6e414b9a688ad5a1fb19c0ecb5fc5e2e7430f5c
"""

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
            path=dict(type="path", required=True),
            reference=dict(type="str", required=True),
            media_type=dict(type="str", choices=["wasm-to-oci", "cncf"], default="wasm-to-oci"),
            **REGISTRY_ARGUMENT_SPEC,
        ),
        required_together=REGISTRY_REQUIRED_TOGETHER,
        supports_check_mode=True,
    )
    require_wasmlet(module)
    from wasmlet.oci.client import RegistryClient
    from wasmlet.oci.errors import RegistryError
    from wasmlet.oci.manifest import build_module_manifest, digest_of, read_module
    from wasmlet.oci.push import push_module
    from wasmlet.oci.reference import parse_reference

    p = module.params
    try:
        ref = parse_reference(p["reference"])
        auth, options = registry_access(p, ref.registry)
        if module.check_mode:
            wasm = read_module(p["path"])
            manifest = build_module_manifest(wasm, p["media_type"])[3]
            digest = digest_of(manifest)
            with RegistryClient.for_registry(ref.registry, auth, options, action="push") as client:
                try:
                    current = client.resolve(ref)
                except RegistryError as exc:
                    if "(HTTP 404)" not in exc.cause:  # only "no such tag" means the push would create it
                        raise
                    current = None
            module.exit_json(changed=current != digest, digest=digest)
        result = push_module(ref, p["path"], p["media_type"], auth, options=options)
    except (RegistryError, OSError, ValueError) as exc:
        module.fail_json(msg=f"push {p['path']} to {p['reference']}: {exc}")
    module.exit_json(changed=result.uploaded, digest=result.digest)


if __name__ == "__main__":
    main()
