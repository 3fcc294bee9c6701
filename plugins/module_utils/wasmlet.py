# Copyright: wasmlet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Import guard for the ``wasmlet`` package, which holds the one implementation the
modules call into (PKI, kubeconfigs, supervised processes, OCI, wasmtime).

Modules call :func:`require_wasmlet` first; it fails with ``missing_required_lib`` when
the interpreter running the module cannot import ``wasmlet``.
"""

from __future__ import annotations

import traceback

try:
    import wasmlet
except ImportError:
    HAS_WASMLET = False
    WASMLET_IMPORT_ERROR = traceback.format_exc()
    WASMLET_VERSION = None
else:
    HAS_WASMLET = True
    WASMLET_IMPORT_ERROR = None
    WASMLET_VERSION = wasmlet.__version__


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
