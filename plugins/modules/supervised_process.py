#!/usr/bin/python
# Copyright: wasmlet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: supervised_process
short_description: Run a long-lived process under wasmlet's supervisor (hosts without systemd)
version_added: "0.1.0"
description:
  - Starts O(argv) under C(wasmlet-supervise), which restarts it when it exits (1 s doubling to 30 s)
    and appends its output to C(<dir>/<name>.log). C(<dir>/<name>.pid) holds the supervisor's pid and
    is locked for as long as it runs.
  - C(state=started) does nothing when the process runs with the same O(argv) and O(env); it starts a
    dead one and restarts one whose command changed. C(state=restarted) always restarts.
    C(state=stopped) sends SIGTERM, then SIGKILL after O(grace) seconds.
  - Use it where systemd is not the service manager; on systemd hosts the roles write units instead.
author:
  - wasmlet contributors (@wasmlet)
requirements:
  - wasmlet (the Python package of this collection) on the managed host
options:
  name:
    description: Service name; names the pid, log and spec files.
    type: str
    required: true
  dir:
    description: Directory for C(<name>.pid), C(<name>.log) and C(<name>.json).
    type: path
    required: true
  argv:
    description: Command and arguments. Required unless O(state=stopped).
    type: list
    elements: str
  env:
    description: Extra environment variables for the process.
    type: dict
    default: {}
  state:
    description: Desired state.
    type: str
    choices: [started, stopped, restarted]
    default: started
  grace:
    description: Seconds between SIGTERM and SIGKILL when stopping.
    type: float
    default: 10
extends_documentation_fragment:
  - wasmlet.kube.attributes
"""

EXAMPLES = r"""
- name: Run etcd supervised
  wasmlet.kube.supervised_process:
    name: etcd
    dir: ~/.wasmlet/cluster/run
    argv: [~/.wasmlet/bin/v1.36.3/etcd, --data-dir, ~/.wasmlet/cluster/etcd]

- name: Stop it
  wasmlet.kube.supervised_process:
    name: etcd
    dir: ~/.wasmlet/cluster/run
    state: stopped
"""

RETURN = r"""
pid:
  description: Pid of the supervisor (null when stopped).
  returned: always
  type: int
  sample: 4242
child_pid:
  description: Pid of the supervised process (null when stopped or between restarts).
  returned: always
  type: int
  sample: 4243
log:
  description: Log file of the process.
  returned: always
  type: str
  sample: /root/.wasmlet/cluster/run/etcd.log
action:
  description: What was done, or null when nothing was needed.
  returned: always
  type: str
  sample: started (not running)
"""

from pathlib import Path

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.wasmlet.kube.plugins.module_utils.wasmlet import require_wasmlet


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            dir=dict(type="path", required=True),
            argv=dict(type="list", elements="str"),
            env=dict(type="dict", default={}),
            state=dict(type="str", choices=["started", "stopped", "restarted"], default="started"),
            grace=dict(type="float", default=10.0),
        ),
        required_if=[("state", "started", ("argv",)), ("state", "restarted", ("argv",))],
        supports_check_mode=True,
    )
    require_wasmlet(module)
    from wasmlet.ops import supervision

    p = module.params
    directory = Path(p["dir"])
    name = p["name"]
    action = None
    try:
        if p["state"] == "stopped":
            if supervision.status(directory, name).running:
                action = "stopped"
                if not module.check_mode:
                    supervision.stop(directory, name, timeout=p["grace"] + 5)
        else:
            spec = supervision.ServiceSpec(
                name=name,
                directory=directory,
                argv=tuple(p["argv"]),
                env={str(k): str(v) for k, v in p["env"].items()},
                grace=p["grace"],
            )
            why = "restart requested" if p["state"] == "restarted" else supervision.needs_start(spec)
            if why is not None:
                action = f"started ({why})"
                if not module.check_mode:
                    supervision.restart(spec)
    except supervision.ServiceError as exc:
        module.fail_json(msg=f"process {name}: {exc}", log=str(directory / f"{name}.log"))
    st = supervision.status(directory, name)
    module.exit_json(
        changed=action is not None,
        action=action,
        pid=st.pid,
        child_pid=st.child_pid,
        log=str(directory / f"{name}.log"),
    )


if __name__ == "__main__":
    main()
