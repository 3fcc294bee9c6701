#!/usr/bin/python
# Copyright: wasmlet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: x509_certificate
short_description: Issue a private key and X.509 certificate, reused while valid
version_added: "0.1.0"
description:
  - Makes O(path) and O(private_key_path) hold a certificate for the asked subject, names and usages,
    signed by the CA in O(ca_cert)/O(ca_key), or self-signed when no CA is given (a root CA with O(is_ca)).
  - An existing certificate is kept while it matches what is asked, belongs to the key, is signed by
    the CA and does not expire within O(renew_before_days); otherwise it is re-issued.
  - The private key is written mode C(0600); certificates C(0644).
  - Certificates use random positive serial numbers, SKI/AKI and key usages that Go's X.509 parser accepts.
author:
  - wasmlet contributors (@wasmlet)
requirements:
  - wasmlet (the Python package of this collection) on the managed host
options:
  path:
    description: Where the PEM certificate is written.
    type: path
    required: true
  private_key_path:
    description: Where the PEM private key is written (created if missing, reused otherwise).
    type: path
    required: true
  common_name:
    description: Subject CN.
    type: str
    required: true
  organizations:
    description: Subject O values (Kubernetes reads them as groups).
    type: list
    elements: str
    default: []
  usages:
    description: Extended key usages.
    type: list
    elements: str
    choices: [server, client]
    default: []
  dns_names:
    description: DNS subject alternative names.
    type: list
    elements: str
    default: []
  ip_addresses:
    description: IP subject alternative names.
    type: list
    elements: str
    default: []
  is_ca:
    description: Issue a CA certificate (BasicConstraints CA, keyCertSign).
    type: bool
    default: false
  ca_cert:
    description: PEM certificate of the signing CA. Omit for a self-signed certificate.
    type: path
  ca_key:
    description: PEM private key of the signing CA. Required with O(ca_cert).
    type: path
  valid_days:
    description: Validity of a newly issued certificate, in days.
    type: int
    default: 365
  renew_before_days:
    description: Re-issue when the certificate expires within this many days.
    type: int
    default: 30
  key_type:
    description: Key algorithm for a new key.
    type: str
    choices: [rsa, ecdsa]
    default: rsa
extends_documentation_fragment:
  - wasmlet.kube.attributes
"""

EXAMPLES = r"""
- name: Create the cluster CA
  wasmlet.kube.x509_certificate:
    path: ~/.wasmlet/cluster/pki/ca.crt
    private_key_path: ~/.wasmlet/cluster/pki/ca.key
    common_name: kubernetes
    is_ca: true
    valid_days: 3650

- name: Issue the apiserver serving certificate
  wasmlet.kube.x509_certificate:
    path: ~/.wasmlet/cluster/pki/apiserver.crt
    private_key_path: ~/.wasmlet/cluster/pki/apiserver.key
    common_name: kube-apiserver
    usages: [server]
    dns_names: [kubernetes, kubernetes.default, localhost]
    ip_addresses: [127.0.0.1, 10.96.0.1]
    ca_cert: ~/.wasmlet/cluster/pki/ca.crt
    ca_key: ~/.wasmlet/cluster/pki/ca.key
"""

RETURN = r"""
reason:
  description: Why the certificate was issued, or C(reused).
  returned: always
  type: str
  sample: certificate expires soon
not_after:
  description: Expiry of the certificate now in place (or that would be issued), RFC 3339.
  returned: always
  type: str
  sample: "2027-11-30T03:50:00+00:00"
serial:
  description: Serial number (hex) of the certificate in place; empty in check mode before it is issued.
  returned: always
  type: str
  sample: 5f3a9c
"""

from pathlib import Path

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.wasmlet.kube.plugins.module_utils.wasmlet import require_wasmlet


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            private_key_path=dict(type="path", required=True, no_log=False),
            common_name=dict(type="str", required=True),
            organizations=dict(type="list", elements="str", default=[]),
            usages=dict(type="list", elements="str", choices=["server", "client"], default=[]),
            dns_names=dict(type="list", elements="str", default=[]),
            ip_addresses=dict(type="list", elements="str", default=[]),
            is_ca=dict(type="bool", default=False),
            ca_cert=dict(type="path"),
            ca_key=dict(type="path", no_log=False),
            valid_days=dict(type="int", default=365),
            renew_before_days=dict(type="int", default=30),
            key_type=dict(type="str", choices=["rsa", "ecdsa"], default="rsa"),
        ),
        required_together=[("ca_cert", "ca_key")],
        supports_check_mode=True,
    )
    require_wasmlet(module)
    from wasmlet.pki import CertSpec, PKIError, ensure_certificate

    p = module.params
    spec = CertSpec(
        common_name=p["common_name"],
        organizations=tuple(p["organizations"]),
        usages=tuple(p["usages"]),
        dns_names=tuple(p["dns_names"]),
        ip_addresses=tuple(p["ip_addresses"]),
        is_ca=p["is_ca"],
        valid_days=p["valid_days"],
        renew_before_days=p["renew_before_days"],
        key_type=p["key_type"],
    )
    try:
        result = ensure_certificate(
            spec,
            Path(p["path"]),
            Path(p["private_key_path"]),
            Path(p["ca_cert"]) if p["ca_cert"] else None,
            Path(p["ca_key"]) if p["ca_key"] else None,
            check_only=module.check_mode,
        )
    except (PKIError, ValueError, OSError) as exc:
        module.fail_json(msg=f"certificate {p['path']} (CN={p['common_name']}): {exc}")
    module.exit_json(
        changed=result.changed,
        reason=result.reason,
        not_after=result.not_after.isoformat(),
        serial=result.serial,
    )


if __name__ == "__main__":
    main()
