# Copyright: wasmlet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options of the modules that talk to an OCI registry (oci_push, oci_pull, oci_info, wasm_run)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  insecure:
    description:
      - Talk plain HTTP to the registry, and only plain HTTP.
      - Not needed for a registry on loopback (V(localhost), an address in 127.0.0.0/8, or V(::1), written
        so in the image reference), which is tried over HTTPS first and spoken to in plain HTTP when it
        answers so, as Docker and containerd do. A certificate that fails verification is never a reason
        for plain HTTP. A host name that resolves to a loopback address is not loopback by this rule.
      - Every other registry is reached over HTTPS unless this is set; a failure that shows the registry
        serves plain HTTP says to set it.
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
