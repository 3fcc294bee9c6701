#!/usr/bin/python
# Copyright: wasmlet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: key_pair
short_description: Create a private key and its public key, reused once created
version_added: "0.1.0"
description:
  - Makes O(private_key_path) hold a PEM private key (mode C(0600)) and O(public_key_path) its
    SubjectPublicKeyInfo PEM, as Kubernetes' service-account signing key pair (C(sa.key), C(sa.pub)).
  - An existing private key is never replaced; only a missing public key is rewritten.
author:
  - wasmlet contributors (@wasmlet)
requirements:
  - wasmlet (the Python package of this collection) on the managed host
options:
  private_key_path:
    description: Where the private key is written.
    type: path
    required: true
  public_key_path:
    description: Where the public key is written.
    type: path
    required: true
  key_type:
    description: Key algorithm of a new key.
    type: str
    choices: [rsa, ecdsa]
    default: rsa
extends_documentation_fragment:
  - wasmlet.kube.attributes
"""

EXAMPLES = r"""
- name: Create the service-account signing key pair
  wasmlet.kube.key_pair:
    private_key_path: ~/.wasmlet/cluster/pki/sa.key
    public_key_path: ~/.wasmlet/cluster/pki/sa.pub
"""

RETURN = r"""
public_key_path:
  description: Path of the public key.
  returned: always
  type: str
  sample: /root/.wasmlet/cluster/pki/sa.pub
fingerprint:
  description: SHA-256 of the public key file (empty in check mode before it exists).
  returned: always
  type: str
  sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
"""

from pathlib import Path

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.wasmlet.kube.plugins.module_utils.wasmlet import require_wasmlet


def main():
    module = AnsibleModule(
        argument_spec=dict(
            private_key_path=dict(type="path", required=True, no_log=False),
            public_key_path=dict(type="path", required=True),
            key_type=dict(type="str", choices=["rsa", "ecdsa"], default="rsa"),
        ),
        supports_check_mode=True,
    )
    require_wasmlet(module)
    from wasmlet.pki import PKIError, ensure_key_pair, public_key_fingerprint

    p = module.params
    try:
        changed = ensure_key_pair(
            Path(p["private_key_path"]),
            Path(p["public_key_path"]),
            p["key_type"],
            check_only=module.check_mode,
        )
    except (PKIError, OSError) as exc:
        module.fail_json(msg=f"key pair {p['private_key_path']}: {exc}")
    module.exit_json(
        changed=changed,
        public_key_path=p["public_key_path"],
        fingerprint=public_key_fingerprint(Path(p["public_key_path"])),
    )


if __name__ == "__main__":
    main()
