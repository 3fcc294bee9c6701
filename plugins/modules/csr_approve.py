#!/usr/bin/python
# Copyright: wasmlet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: csr_approve
short_description: Approve a node's kubelet serving CSR only after validating it
version_added: "0.1.0"
description:
  - Finds the pending C(kubernetes.io/kubelet-serving) CSRs named O(name), or requested by node
    O(node), validates each and approves the ones that pass, as C(kubectl certificate approve)
    would, but never blindly.
  - "A CSR passes only if: its signer is kubelet-serving; its CN is C(system:node:<node>) and equals
    the requesting user; its O is exactly C(system:nodes); its usages are digital signature and server
    auth (plus key encipherment for RSA); its DNS SANs are names of that Node and its IP SANs addresses
    in the Node's status; it has no email or URI SANs; its requested expiration is at most
    O(max_expiration_seconds)."
  - A CSR that fails validation is never approved; the task fails naming the CSR and every reason,
    and with O(deny_invalid=true) the CSR is also denied.
author:
  - wasmlet contributors (@wasmlet)
requirements:
  - wasmlet (the Python package of this collection) on the managed host
options:
  kubeconfig:
    description: Kubeconfig of an identity allowed to approve CSRs (the cluster admin).
    type: path
    required: true
  name:
    description: Name of the CSR (for a wasmlet or Krustlet node, C(<node>-tls)).
    type: str
  node:
    description: Approve the pending serving CSRs of this node.
    type: str
  wait_seconds:
    description: How long to wait for a matching pending CSR to appear.
    type: int
    default: 0
  max_expiration_seconds:
    description: Largest C(spec.expirationSeconds) accepted.
    type: int
    default: 31536000
  deny_invalid:
    description: Deny CSRs that fail validation (they are never approved either way).
    type: bool
    default: false
  missing_ok:
    description: Succeed without a change when no matching CSR is pending or approved.
    type: bool
    default: false
extends_documentation_fragment:
  - wasmlet.kube.attributes
"""

EXAMPLES = r"""
- name: Approve the serving certificate of node wasm-1
  wasmlet.kube.csr_approve:
    kubeconfig: ~/.wasmlet/cluster/admin.kubeconfig
    node: wasm-1
    wait_seconds: 60
"""

RETURN = r"""
approved:
  description: CSRs approved (or, in check mode, that would be).
  returned: always
  type: list
  elements: str
  sample: [wasm-1-tls]
already_approved:
  description: Matching CSRs that were approved before.
  returned: always
  type: list
  elements: str
  sample: []
"""

import time
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.wasmlet.kube.plugins.module_utils.wasmlet import require_wasmlet

CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"


def _is_approved(csr):
    return any(c.get("type") == "Approved" for c in (csr.get("status") or {}).get("conditions") or [])


def _decided(csr):
    return any(
        c.get("type") in ("Approved", "Denied", "Failed")
        for c in (csr.get("status") or {}).get("conditions") or []
    )


def _find(client, matches, wait_seconds, missing_ok):
    """Matching CSRs, waiting up to ``wait_seconds`` for a pending or approved one."""
    deadline = time.monotonic() + wait_seconds
    while True:
        found = [item for item in client.get(CSRS).get("items") or [] if matches(item)]
        settled = any(not _decided(i) for i in found) or any(_is_approved(i) for i in found)
        if settled or missing_ok or time.monotonic() >= deadline:
            return found
        time.sleep(1)


def _node_of(client, item):
    from wasmlet import csr as csrlib
    from wasmlet.kubeapi import ApiError

    who = csrlib.requested_node(item)
    if not who:
        return None
    try:
        return client.get(f"/api/v1/nodes/{who}")
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def main():
    module = AnsibleModule(
        argument_spec=dict(
            kubeconfig=dict(type="path", required=True),
            name=dict(type="str"),
            node=dict(type="str"),
            wait_seconds=dict(type="int", default=0),
            max_expiration_seconds=dict(type="int", default=31536000),
            deny_invalid=dict(type="bool", default=False),
            missing_ok=dict(type="bool", default=False),
        ),
        required_one_of=[("name", "node")],
        supports_check_mode=True,
    )
    require_wasmlet(module)
    from wasmlet import csr as csrlib
    from wasmlet.kubeapi import ApiError, Client

    p = module.params

    def matches(item):
        if item["spec"].get("signerName") != csrlib.SERVING_SIGNER:
            return False
        if p["name"] and item["metadata"]["name"] != p["name"]:
            return False
        return not p["node"] or item["spec"].get("username") == f"system:node:{p['node']}"

    try:
        with Client.from_kubeconfig(Path(p["kubeconfig"])) as client:
            found = _find(client, matches, p["wait_seconds"], p["missing_ok"])
            already = sorted(i["metadata"]["name"] for i in found if _is_approved(i))
            pending = [i for i in found if not _decided(i)]
            if not pending and not already:
                if p["missing_ok"]:
                    module.exit_json(changed=False, approved=[], already_approved=[])
                what = p["name"] or f"node {p['node']}"
                module.fail_json(msg=f"no pending kubelet-serving CSR for {what} after {p['wait_seconds']}s")
            approved, invalid = [], []
            for item in pending:
                name = item["metadata"]["name"]
                verdict = csrlib.validate(item, _node_of(client, item), p["max_expiration_seconds"])
                if verdict.ok:
                    approved.append(name)
                    message = f"validated for node {verdict.node} by wasmlet.kube.csr_approve"
                    decision = csrlib.approval(item, "WasmletValidated", message)
                else:
                    invalid.append((name, verdict.reasons))
                    if not p["deny_invalid"]:
                        continue
                    decision = csrlib.approval(item, "WasmletInvalid", "; ".join(verdict.reasons), False)
                if not module.check_mode:
                    client.put(f"{CSRS}/{name}/approval", decision)
    except (ApiError, OSError, ValueError) as exc:
        module.fail_json(msg=f"csr_approve for {p['name'] or p['node']}: {exc}")
    if invalid:
        details = "; ".join(f"{name}: {', '.join(reasons)}" for name, reasons in invalid)
        module.fail_json(msg=f"refused to approve: {details}", approved=approved, already_approved=already)
    module.exit_json(changed=bool(approved), approved=approved, already_approved=already)


if __name__ == "__main__":
    main()
