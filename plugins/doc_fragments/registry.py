# Copyright: wasmlet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options of the modules that talk to an OCI registry (oci_push, oci_pull, oci_info, wasm_run)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  insecure:
    description: Talk plain HTTP to the registry.
    type: bool
    default: false
  ca_file:
    description: CA certificate that verifies the registry.
    type: path
  username:
    description: Registry user (basic auth, or for a token service). Requires O(password).
    type: str
  password:
    description: Registry password. Requires O(username).
    type: str
"""
