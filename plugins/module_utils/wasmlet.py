# Copyright: wasmlet contributors
# Apache License 2.0 (see LICENSE)
"""Import guard for the ``wasmlet`` package, which holds the one implementation the
modules call into (PKI, kubeconfigs, supervised processes, OCI, wasmtime).

Modules call :func:`require_wasmlet` first; it fails with ``missing_required_lib`` when
the interpreter running the module cannot import ``wasmlet``.
"""

from __future__ import annotations

import traceback

try:
    import wasmlet  # noqa: F401  (imported for the availability check)
except ImportError:
    HAS_WASMLET = False
    WASMLET_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_WASMLET = True
    WASMLET_IMPORT_ERROR = None


def require_wasmlet(module):
    """Fail the module clearly when ``wasmlet`` is not importable."""
    if not HAS_WASMLET:
        from ansible.module_utils.basic import missing_required_lib

        module.fail_json(
            msg=missing_required_lib(
                "wasmlet",
                url="install it into the Python that runs this module (pip install wasmlet), "
                "or set ansible_python_interpreter to the venv that has it",
            ),
            exception=WASMLET_IMPORT_ERROR,
        )
