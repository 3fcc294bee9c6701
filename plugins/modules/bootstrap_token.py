#!/usr/bin/python
# Copyright: wasmlet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bootstrap_token
short_description: Create, reuse, rotate or delete a node bootstrap token and its bootstrap kubeconfig
version_added: "0.1.0"
description:
  - Manages a C(bootstrap.kubernetes.io/token) Secret in C(kube-system), as kubeadm and Krustlet's
    C(bootstrap.sh) make it, and writes the bootstrap kubeconfig (C(bootstrap.conf), mode C(0600)) a node
    joins with.
  - With O(state=present) the token in O(bootstrap_kubeconfig) is reused while its Secret exists and has
    at least O(min_remaining_seconds) left; otherwise a new token is created and the file rewritten.
    O(rotate=true) always makes a new one.
  - With O(state=absent) the token named by O(token_id), or the one in O(bootstrap_kubeconfig), is deleted.
author:
  - wasmlet contributors (@wasmlet)
requirements:
  - wasmlet (the Python package of this collection) on the managed host
options:
  kubeconfig:
    description: Admin kubeconfig of the cluster.
    type: path
    required: true
  state:
    description: Whether the token should exist.
    type: str
    choices: [present, absent]
    default: present
  bootstrap_kubeconfig:
    description:
      - Where the bootstrap kubeconfig is written (and its token read back on re-runs).
      - Required with O(state=present).
    type: path
  token_id:
    description: The token to delete with O(state=absent), or to reuse with O(state=present).
    type: str
  ttl_seconds:
    description: Lifetime of a new token; the token cleaner deletes it afterwards.
    type: int
    default: 3600
  min_remaining_seconds:
    description: Reuse an existing token only while it has this much time left.
    type: int
    default: 600
  rotate:
    description: Create a new token even when the existing one is still valid.
    type: bool
    default: false
  description:
    description: Description stored in the token Secret.
    type: str
    default: wasmlet node bootstrap
extends_documentation_fragment:
  - wasmlet.kube.attributes
"""

EXAMPLES = r"""
- name: Write ~/.wasmlet/config/bootstrap.conf with a valid token
  wasmlet.kube.bootstrap_token:
    kubeconfig: ~/.wasmlet/cluster/admin.kubeconfig
    bootstrap_kubeconfig: ~/.wasmlet/config/bootstrap.conf

- name: Delete the token again
  wasmlet.kube.bootstrap_token:
    kubeconfig: ~/.wasmlet/cluster/admin.kubeconfig
    bootstrap_kubeconfig: ~/.wasmlet/config/bootstrap.conf
    state: absent
"""

RETURN = r"""
token_id:
  description: Id of the token (the public half; the secret half is never returned).
  returned: when a token exists or was deleted
  type: str
  sample: 07401b
expiration:
  description: When the token expires, RFC 3339.
  returned: with state=present
  type: str
  sample: "2026-11-30T05:00:00+00:00"
"""

import datetime as dt
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.wasmlet.kube.plugins.module_utils.wasmlet import require_wasmlet


def main():
    module = AnsibleModule(
        argument_spec=dict(
            kubeconfig=dict(type="path", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            bootstrap_kubeconfig=dict(type="path"),
            token_id=dict(type="str"),
            ttl_seconds=dict(type="int", default=3600),
            min_remaining_seconds=dict(type="int", default=600),
            rotate=dict(type="bool", default=False),
            description=dict(type="str", default="wasmlet node bootstrap"),
        ),
        required_one_of=[("bootstrap_kubeconfig", "token_id")],
        required_if=[("state", "present", ("bootstrap_kubeconfig",))],
        supports_check_mode=True,
    )
    require_wasmlet(module)
    from wasmlet.kube import kubeconfig
    from wasmlet.kube.client import ApiError, Client
    from wasmlet.ops import tokens

    p = module.params
    path = Path(p["bootstrap_kubeconfig"]) if p["bootstrap_kubeconfig"] else None
    try:
        admin_creds = kubeconfig.load(Path(p["kubeconfig"]))
        current_id = p["token_id"]
        if current_id is None and path is not None and path.exists():
            token = kubeconfig.load(path).token or ""
            current_id = token.split(".", 1)[0] if tokens.TOKEN_RE.match(token) else None
        with Client(admin_creds) as admin:
            existing = tokens.get(admin, current_id) if current_id else None
            if p["state"] == "absent":
                changed = existing is not None
                if changed and not module.check_mode:
                    tokens.delete(admin, current_id)
                module.exit_json(changed=changed, token_id=current_id)
            now = dt.datetime.now(dt.UTC)
            fresh = (
                existing is not None
                and not p["rotate"]
                and existing.expiration - now > dt.timedelta(seconds=p["min_remaining_seconds"])
            )
            if fresh and path is not None:
                wanted = tokens.render_bootstrap_kubeconfig(admin_creds, existing.token)
                same = (
                    path.exists() and path.read_bytes() == wanted and (path.stat().st_mode & 0o777) == 0o600
                )
                if not same and not module.check_mode:
                    tokens.write_bootstrap_kubeconfig(path, admin_creds, existing.token)
                module.exit_json(
                    changed=not same, token_id=existing.token_id, expiration=existing.expiration.isoformat()
                )
            if module.check_mode:
                module.exit_json(changed=True)
            created = tokens.create(admin, dt.timedelta(seconds=p["ttl_seconds"]), p["description"])
            if path is not None:
                tokens.write_bootstrap_kubeconfig(path, admin_creds, created.token)
            module.exit_json(
                changed=True, token_id=created.token_id, expiration=created.expiration.isoformat()
            )
    except (kubeconfig.KubeconfigError, ApiError, OSError, ValueError) as exc:
        module.fail_json(msg=f"bootstrap token for {p['bootstrap_kubeconfig'] or p['token_id']}: {exc}")


if __name__ == "__main__":
    main()
