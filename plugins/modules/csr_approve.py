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
  - What a node reports in its own status is not trusted on its own. A CSR passes only if every rule
    holds; each refusal starts with the rule's name.
  - "C(requester): the requesting user is C(system:node:<node>). C(groups): its groups include
    C(system:nodes). C(owner): with O(node), the requester is that node; with only O(name), the CSR is
    named C(<node>-tls) after its requester. C(node): the Node exists."
  - "C(subject-cn), C(subject-o), C(subject-extra): the subject is exactly CN C(system:node:<node>) and
    O C(system:nodes). C(key): RSA of at least 2048 bits, or ECDSA on P-256 or P-384 (Ed25519, P-521
    and others are refused). C(usages): exactly digital signature and server auth, plus key
    encipherment for an RSA key (what the kubelet asks for)."
  - "C(san-missing), C(san-type): at least one SAN, and only DNS and IP SANs. C(wildcard): no DNS SAN
    contains C(*). C(dns-name): every DNS SAN is the node name, or C(<node>.<dns_domain>) with
    O(dns_domain). C(ip-prefix): every IP SAN is inside O(ip_prefixes). C(ip-node): every IP SAN is an
    InternalIP or ExternalIP of the node. C(other-node): no SAN is a name or address of another Node.
    C(expiration): the requested expiration is at most O(max_expiration_seconds). Also C(signer),
    C(pending) and C(request): a parseable, self-signed, still pending kubelet-serving request."
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
    description:
      - Name of the CSR (for a wasmlet or Krustlet node, C(<node>-tls)).
      - Without O(node), only a CSR named C(<node>-tls) and requested by that node is approved; give
        O(node) as well for a CSR with another name (a kubelet's C(csr-xxxxx)).
    type: str
  node:
    description:
      - Approve the pending serving CSRs of this node; with O(name), the CSR must be this node's.
    type: str
  ip_prefixes:
    description:
      - Network prefixes every IP SAN must fall into (IPv4 and IPv6 CIDRs). List your nodes' subnets.
      - When omitted, the private-use and loopback ranges C(10.0.0.0/8), C(172.16.0.0/12),
        C(192.168.0.0/16), C(127.0.0.0/8), C(fc00::/7) and C(::1/128); public addresses must be listed.
      - An empty list allows no IP SANs at all.
    type: list
    elements: str
  dns_domain:
    description:
      - Domain under which a node may also be named, so that C(<node>.<dns_domain>) is an allowed DNS
        SAN besides C(<node>). No other DNS names are ever allowed.
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

- name: Approve wasm-1-tls, for wasm-1 or wasm-1.nodes.example.com on the node subnet only
  wasmlet.kube.csr_approve:
    kubeconfig: ~/.wasmlet/cluster/admin.kubeconfig
    name: wasm-1-tls
    ip_prefixes: [192.0.2.0/24]
    dns_domain: nodes.example.com
    deny_invalid: true
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
refused:
  description: "Each CSR that failed validation, with every reason (C(<rule>: <detail>))."
  returned: when a CSR failed validation
  type: dict
  sample: {"rogue-tls": ["other-node: SANs ['10.0.0.7'] belong to node(s) ['wasm-1']"]}
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


def main():
    module = AnsibleModule(
        argument_spec=dict(
            kubeconfig=dict(type="path", required=True),
            name=dict(type="str"),
            node=dict(type="str"),
            wait_seconds=dict(type="int", default=0),
            max_expiration_seconds=dict(type="int", default=31536000),
            ip_prefixes=dict(type="list", elements="str"),
            dns_domain=dict(type="str"),
            deny_invalid=dict(type="bool", default=False),
            missing_ok=dict(type="bool", default=False),
        ),
        required_one_of=[("name", "node")],
        supports_check_mode=True,
    )
    require_wasmlet(module)
    from wasmlet.kube.client import ApiError, Client
    from wasmlet.ops import csr as csrlib

    p = module.params
    try:
        policy = csrlib.Policy.from_options(p["ip_prefixes"], p["dns_domain"], p["max_expiration_seconds"])
    except ValueError as exc:
        module.fail_json(msg=f"csr_approve: {exc}")
    # The node the CSR must belong to: the one named, else the one its name says (<node>-tls).
    owner = p["node"] or csrlib.name_owner(p["name"])

    def matches(item):
        if item["spec"].get("signerName") != csrlib.SERVING_SIGNER:
            return False
        if p["name"]:
            return item["metadata"]["name"] == p["name"]
        return item["spec"].get("username") == f"{csrlib.NODE_USER_PREFIX}{p['node']}"

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
            nodes = client.get("/api/v1/nodes")["items"] if pending else []
            for item in pending:
                name = item["metadata"]["name"]
                verdict = csrlib.validate(item, nodes, policy, owner)
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
        module.fail_json(
            msg=f"refused to approve: {details}",
            approved=approved,
            already_approved=already,
            refused={name: list(reasons) for name, reasons in invalid},
        )
    module.exit_json(changed=bool(approved), approved=approved, already_approved=already)


if __name__ == "__main__":
    main()
