#!/usr/bin/python
# Copyright: wasmlet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: kubeconfig
short_description: Write a self-contained kubeconfig (embedded CA and credentials)
version_added: "0.1.0"
description:
  - Writes a kubeconfig with one cluster, one user and one context, embedding the CA and either a
    client certificate and key or a bearer token. The file is mode C(0600).
  - Rewritten only when its content would change.
author:
  - wasmlet contributors (@wasmlet)
requirements:
  - wasmlet (the Python package of this collection) on the managed host
options:
  path:
    description: Where the kubeconfig is written.
    type: path
    required: true
  server:
    description: API server URL.
    type: str
    required: true
  ca_cert:
    description: PEM file of the cluster CA.
    type: path
    required: true
  user:
    description: Name of the user entry.
    type: str
    required: true
  cluster:
    description: Name of the cluster entry.
    type: str
    default: wasmlet
  client_cert:
    description: PEM client certificate file.
    type: path
  client_key:
    description: PEM client key file.
    type: path
  token:
    description: Bearer token (for example a bootstrap token C(<id>.<secret>)).
    type: str
extends_documentation_fragment:
  - wasmlet.kube.attributes
"""

EXAMPLES = r"""
- name: Write the admin kubeconfig
  wasmlet.kube.kubeconfig:
    path: ~/.wasmlet/cluster/admin.kubeconfig
    server: https://127.0.0.1:6443
    ca_cert: ~/.wasmlet/cluster/pki/ca.crt
    user: kubernetes-admin
    client_cert: ~/.wasmlet/cluster/pki/admin.crt
    client_key: ~/.wasmlet/cluster/pki/admin.key
"""

RETURN = r"""
path:
  description: The kubeconfig written.
  returned: always
  type: str
  sample: /root/.wasmlet/cluster/admin.kubeconfig
"""

from pathlib import Path

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.wasmlet.kube.plugins.module_utils.wasmlet import require_wasmlet


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            server=dict(type="str", required=True),
            ca_cert=dict(type="path", required=True),
            user=dict(type="str", required=True),
            cluster=dict(type="str", default="wasmlet"),
            client_cert=dict(type="path"),
            client_key=dict(type="path", no_log=False),
            token=dict(type="str", no_log=True),
        ),
        required_together=[("client_cert", "client_key")],
        required_one_of=[("client_cert", "token")],
        supports_check_mode=True,
    )
    require_wasmlet(module)
    from wasmlet.kube import kubeconfig

    p = module.params
    path = Path(p["path"])
    try:
        content = kubeconfig.render(
            server=p["server"],
            ca_pem=Path(p["ca_cert"]).read_bytes(),
            user=p["user"],
            cluster=p["cluster"],
            client_cert_pem=Path(p["client_cert"]).read_bytes() if p["client_cert"] else None,
            client_key_pem=Path(p["client_key"]).read_bytes() if p["client_key"] else None,
            token=p["token"],
        )
    except OSError as exc:
        if module.check_mode:
            module.exit_json(changed=True, path=str(path))
        module.fail_json(msg=f"kubeconfig {path}: cannot read {exc.filename}: {exc.strerror}")
    if module.check_mode:
        try:
            same = path.read_bytes() == content and (path.stat().st_mode & 0o777) == 0o600
        except OSError:
            same = False
        module.exit_json(changed=not same, path=str(path))
    module.exit_json(changed=kubeconfig.write(path, content), path=str(path))


if __name__ == "__main__":
    main()
