#!/usr/bin/python
# Copyright: wasmlet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: wasm_run
short_description: Run a WASI (preview1) wasm module once and capture its output
version_added: "0.1.0"
description:
  - Runs a wasm32-wasi command module on wasmtime, with the wasmlet runtime the node agent uses, and
    returns its exit code, stdout and stderr.
  - The module is a local file (O(module)) or pulled from an OCI registry (O(reference)) into a
    temporary directory, as M(wasmlet.kube.oci_pull) does. O(insecure), O(ca_file), O(username) and
    O(password) apply only with O(reference).
  - A module that exits with a non-zero code, traps, fails to start, or runs longer than O(timeout)
    (it is then killed) fails the task, naming the module and the cause; RV(stdout), RV(stderr) and
    RV(rc) are still returned.
  - Standard input is not supported (the runtime gives the module no stdin; reads see end of file).
  - Running something is always reported as C(changed). In check mode nothing runs and the task is
    skipped.
author:
  - wasmlet contributors (@wasmlet)
requirements:
  - wasmlet (the Python package of this collection) on the managed host
options:
  module:
    description:
      - Path of a local module file, binary wasm (C(.wasm)) or WebAssembly text (a file named C(*.wat)),
        converted with wasmtime's C(wat2wasm) first, as M(wasmlet.kube.oci_push) does.
      - Exactly one of O(module) and O(reference) is required.
    type: path
  reference:
    description: OCI reference of the module, for example C(127.0.0.1:5000/hello:v1).
    type: str
  args:
    description: Arguments after the program name (C(argv[0]) is the module's file or repository name).
    type: list
    elements: str
    default: []
  env:
    description: Environment variables of the module (it sees no others).
    type: dict
    default: {}
  dirs:
    description: Host directories to make visible to the module (WASI preopens).
    type: list
    elements: dict
    default: []
    suboptions:
      host:
        description: Directory on the host; it must exist.
        type: path
        required: true
      guest:
        description: Path the module sees it at.
        type: str
        required: true
      read_only:
        description: Mount it read-only.
        type: bool
        default: false
  timeout:
    description: Seconds the module may run; then it is killed and the task fails with C(timed out).
    type: float
    default: 30
  memory_limit:
    description: Largest linear memory the module may have, in bytes (no limit when unset).
    type: int
extends_documentation_fragment:
  - wasmlet.kube.registry
  - wasmlet.kube.attributes
attributes:
  check_mode:
    support: partial
    details: In check mode the module is not run and the task is reported as skipped.
notes:
  - Compiled modules are cached in a temporary directory removed when the task ends.
"""

EXAMPLES = r"""
- name: Run a local module with arguments and a read-only directory
  wasmlet.kube.wasm_run:
    module: ~/.wasmlet/build/tool.wasm
    args: [--input, /data/in.txt]
    env:
      LOG_LEVEL: debug
    dirs:
      - host: /srv/data
        guest: /data
        read_only: true
    timeout: 10
  register: tool

- name: Run a module written in WebAssembly text
  wasmlet.kube.wasm_run:
    module: /srv/modules/hello.wat

- name: Run a module straight from a registry
  wasmlet.kube.wasm_run:
    reference: 127.0.0.1:5000/hello:v1
    insecure: true
"""

RETURN = r"""
stdout:
  description: What the module wrote to standard output (UTF-8, invalid bytes replaced).
  returned: always when the module was started
  type: str
  sample: "Hello, World!\n"
stderr:
  description: What the module wrote to standard error (UTF-8, invalid bytes replaced).
  returned: always when the module was started
  type: str
  sample: ""
rc:
  description: Exit code (134 for a trap, 137 when killed, 128 when it could not start).
  returned: always when the module was started
  type: int
  sample: 0
reason:
  description: C(Completed), C(Error), C(OOMKilled) or C(Killed).
  returned: always when the module was started
  type: str
  sample: Completed
message:
  description: The trap or start failure cause (empty for a normal exit).
  returned: always when the module was started
  type: str
  sample: "wasm trap: wasm `unreachable` instruction executed"
duration:
  description: Seconds the module ran.
  returned: always when the module was started
  type: float
  sample: 0.012
timed_out:
  description: Whether the module was killed for running longer than O(timeout).
  returned: always when the module was started
  type: bool
  sample: false
digest:
  description: With O(reference), the manifest digest that was run.
  returned: when O(reference) is given
  type: str
  sample: sha256:2297936b402cc9ff57781489b6e414b9a688ad5a1fb19c0ecb5fc5e2e7430f5c
"""

import os
import tempfile
import threading
import time
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.wasmlet.kube.plugins.module_utils.registry import (
    REGISTRY_ARGUMENT_SPEC,
    REGISTRY_REQUIRED_TOGETHER,
    registry_access,
)
from ansible_collections.wasmlet.kube.plugins.module_utils.wasmlet import require_wasmlet

KILL_WAIT = 5.0


class _Output:
    """Chunks one stream of the module wrote (called from the execution thread)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._chunks = []

    def write(self, chunk):
        with self._lock:
            self._chunks.append(bytes(chunk))

    def text(self):
        with self._lock:
            return b"".join(self._chunks).decode("utf-8", errors="replace")


def _pull(module, reference, store_root):
    """Pull ``reference`` into a store under ``store_root``: (path of the module, manifest digest)."""
    from wasmlet.oci.pull import ensure_module
    from wasmlet.oci.reference import parse_reference
    from wasmlet.oci.store import ModuleStore

    ref = parse_reference(reference)
    auth, options = registry_access(module.params, ref.registry)
    pulled = ensure_module(ref, "Always", auth, store=ModuleStore(store_root), options=options)
    return pulled.path, pulled.digest, ref.repository.rpartition("/")[2]


def _local(module, path, tmp, what):
    """A local module (binary wasm or ``.wat`` text) as a binary file under ``tmp``: (path, argv[0])."""
    from wasmlet.oci.manifest import read_module

    if not path.is_file():
        module.fail_json(msg=f"run {what}: no such file")
    try:
        wasm = read_module(path)
    except (OSError, ValueError) as exc:
        module.fail_json(msg=f"run {what}: cannot load it: {exc}")
    binary = tmp / "module.wasm"
    binary.write_bytes(wasm)
    return binary, path.name


def _preopens(module, what):
    """``dirs`` as RunSpec preopens; fails on a host directory that does not exist."""
    preopens = []
    for entry in module.params["dirs"]:
        if not os.path.isdir(entry["host"]):
            module.fail_json(msg=f"run {what}: dirs: host directory {entry['host']} does not exist")
        preopens.append((Path(entry["host"]), entry["guest"], entry["read_only"]))
    return preopens


def _ignore_exit(_status):
    """on_exit callback: the status is read from Execution.wait instead."""


def _run(runtime, spec, timeout):
    """Run ``spec`` on ``runtime`` (closed afterwards): (ExitStatus or None, seconds, timed out)."""
    timed_out = False
    try:
        started = time.monotonic()
        execution = runtime.start(spec, _ignore_exit)
        status = execution.wait(timeout)
        if status is None:
            timed_out = True
            execution.stop(0)
            status = execution.wait(KILL_WAIT)
        return status, time.monotonic() - started, timed_out
    finally:
        runtime.close()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            module=dict(type="path"),
            reference=dict(type="str"),
            args=dict(type="list", elements="str", default=[]),
            env=dict(type="dict", default={}),
            dirs=dict(
                type="list",
                elements="dict",
                default=[],
                options=dict(
                    host=dict(type="path", required=True),
                    guest=dict(type="str", required=True),
                    read_only=dict(type="bool", default=False),
                ),
            ),
            timeout=dict(type="float", default=30.0),
            memory_limit=dict(type="int"),
            **REGISTRY_ARGUMENT_SPEC,
        ),
        mutually_exclusive=[("module", "reference")],
        required_one_of=[("module", "reference")],
        required_together=REGISTRY_REQUIRED_TOGETHER,
        supports_check_mode=True,
    )
    require_wasmlet(module)
    from wasmlet.oci.errors import RegistryError
    from wasmlet.runtime.engine import RunSpec, Runtime

    p = module.params
    what = p["module"] or p["reference"]
    if module.check_mode:
        module.exit_json(changed=False, skipped=True, msg=f"check mode: wasm module {what} not run")
    if p["timeout"] <= 0:
        module.fail_json(msg=f"run {what}: timeout must be positive, not {p['timeout']}")
    if p["memory_limit"] is not None and p["memory_limit"] <= 0:
        module.fail_json(msg=f"run {what}: memory_limit must be a positive number of bytes")
    preopens = _preopens(module, what)
    env = {str(key): "" if value is None else str(value) for key, value in p["env"].items()}

    extra = {}
    with tempfile.TemporaryDirectory(prefix="wasmlet-wasm-run-") as tmp:
        if p["reference"]:
            try:
                wasm, extra["digest"], program = _pull(module, p["reference"], Path(tmp) / "modules")
            except (RegistryError, OSError, ValueError) as exc:
                module.fail_json(msg=f"run {what}: cannot pull it: {exc}")
        else:
            wasm, program = _local(module, Path(p["module"]), Path(tmp), what)
        stdout, stderr = _Output(), _Output()
        spec = RunSpec(
            module=wasm,
            argv=[program, *p["args"]],
            env=env,
            stdout=stdout.write,
            stderr=stderr.write,
            preopens=preopens,
            memory_limit_bytes=p["memory_limit"],
            name=f"wasm_run {program}",
        )
        status, duration, timed_out = _run(Runtime(Path(tmp) / "compiled"), spec, p["timeout"])

    result = dict(
        stdout=stdout.text(), stderr=stderr.text(), duration=round(duration, 3), timed_out=timed_out, **extra
    )
    if status is None:  # not even stop() ended it: should not happen
        module.fail_json(
            msg=f"wasm module {what} timed out after {p['timeout']:g} s and did not stop",
            rc=-1,
            reason="Killed",
            message="",
            **result,
        )
    result.update(rc=status.exit_code, reason=status.reason, message=status.message)
    if timed_out:
        module.fail_json(msg=f"wasm module {what} timed out after {p['timeout']:g} s (killed)", **result)
    if status.exit_code != 0 or status.reason != "Completed":
        cause = f": {status.message}" if status.message else ""
        module.fail_json(
            msg=f"wasm module {what} failed: {status.reason}, exit code {status.exit_code}{cause}", **result
        )
    module.exit_json(changed=True, **result)


if __name__ == "__main__":
    main()
