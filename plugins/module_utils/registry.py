# Copyright: wasmlet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Registry options shared by the modules that talk to an OCI registry.

The options are documented in the ``wasmlet.kube.registry`` doc fragment. ``wasmlet`` is imported
only when :func:`registry_access` is called, after the module's ``require_wasmlet``, so this file
imports cleanly without it.
"""

from __future__ import annotations

from pathlib import Path

REGISTRY_ARGUMENT_SPEC = dict(
    insecure=dict(type="bool", default=False),
    ca_file=dict(type="path"),
    username=dict(type="str"),
    password=dict(type="str", no_log=True),
)

REGISTRY_REQUIRED_TOGETHER = [("username", "password")]

# What errors tell a playbook to do about a registry that serves plain HTTP (not on loopback).
INSECURE_HINT = "set insecure: true"


def registry_access(params, registry):
    """``(auth, options)`` for talking to ``registry`` (``host[:port]``) as the module's params say.

    ``auth`` is a ``wasmlet.oci.credentials.RegistryAuth``, or None (anonymous) without ``username``;
    ``options`` is a ``wasmlet.oci.client.RegistryOptions`` that speaks plain HTTP to ``registry`` when
    ``insecure`` is set (a loopback registry gets plain HTTP without it, after HTTPS), verifies its
    certificate with ``ca_file`` when given, and whose errors name ``insecure: true`` as the way to
    plain HTTP.
    """
    from wasmlet.oci.client import RegistryOptions
    from wasmlet.oci.credentials import RegistryAuth

    auth = None
    if params["username"]:
        auth = RegistryAuth(username=params["username"], password=params["password"])
    options = RegistryOptions(
        insecure_registries=frozenset({registry} if params["insecure"] else ()),
        ca_file=Path(params["ca_file"]) if params["ca_file"] else None,
        insecure_hint=INSECURE_HINT,
    )
    return auth, options
