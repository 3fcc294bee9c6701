#!/usr/bin/python
# Copyright: wasmlet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: htpasswd
short_description: Keep a bcrypt htpasswd file (registry basic auth) holding exactly the given users
version_added: "0.1.0"
description:
  - Writes O(path) (mode C(0600)) with one bcrypt line per user in O(users). Users not listed are removed.
  - An existing hash is kept while it still verifies the given password, so re-runs change nothing.
author:
  - wasmlet contributors (@wasmlet)
requirements:
  - wasmlet and bcrypt on the managed host
options:
  path:
    description: The htpasswd file.
    type: path
    required: true
  users:
    description: Users and their passwords.
    type: list
    elements: dict
    required: true
    suboptions:
      username:
        description: User name (no C(:)).
        type: str
        required: true
      password:
        description: Password, never logged.
        type: str
        required: true
extends_documentation_fragment:
  - wasmlet.kube.attributes
"""

EXAMPLES = r"""
- name: Registry users
  wasmlet.kube.htpasswd:
    path: ~/.wasmlet/registry/htpasswd
    users:
      - username: ci
        password: "{{ vault_registry_password }}"
"""

RETURN = r"""
users:
  description: The user names in the file.
  returned: always
  type: list
  elements: str
  sample: [ci]
checksum:
  description: SHA-256 of the file's content (changes exactly when the file does).
  returned: always
  type: str
  sample: 2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae
"""

from pathlib import Path

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.wasmlet.kube.plugins.module_utils.wasmlet import require_wasmlet


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            users=dict(
                type="list",
                elements="dict",
                required=True,
                options=dict(
                    username=dict(type="str", required=True),
                    password=dict(type="str", required=True, no_log=True),
                ),
            ),
        ),
        supports_check_mode=True,
    )
    require_wasmlet(module)
    from wasmlet.ops import htpasswd

    users = {u["username"]: u["password"] for u in module.params["users"]}
    try:
        changed = htpasswd.ensure(Path(module.params["path"]), users, check_only=module.check_mode)
    except (ValueError, OSError) as exc:
        module.fail_json(msg=f"htpasswd {module.params['path']}: {exc}")
    module.exit_json(
        changed=changed, users=sorted(users), checksum=htpasswd.checksum(Path(module.params["path"]))
    )


if __name__ == "__main__":
    main()
