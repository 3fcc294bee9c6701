"""The package tree is the data flow: no module imports from a stage above its own.

kube (the apiserver) < oci, runtime, logs (images, modules, their output) < node (the Node, its
API, eviction) < pod (a pod's trip, which uses all of them) < config, agent, cli (which wire
them). ``ops`` (what the Ansible collection does around the node) stands beside the node: it may
use the apiserver client and the shared helpers, and nothing of the node imports it. Type-only
imports (``if TYPE_CHECKING:``) do not count: ``NodeConfig`` is the settings' type everywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

import wasmlet

PACKAGE = Path(wasmlet.__file__).parent
SHARED = 0
RANKS = {
    "__init__": SHARED,
    "paths": SHARED,
    "fsutil": SHARED,
    "held_dir": SHARED,
    "pki": SHARED,
    "kube": 1,
    "ops": 2,
    "oci": 2,
    "runtime": 2,
    "logs": 2,
    "network": 2,
    "node": 3,
    "serve": 3,
    "pod": 4,
    "config": 5,
    "agent": 5,
    "cli": 5,
}


def stage(module: str) -> str:
    """``wasmlet.pod.controller`` -> ``pod``; ``wasmlet`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported(tree: ast.AST) -> set[str]:
    """Every wasmlet module a module imports at run time (``from wasmlet import x`` names ``x``)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for statement in node.orelse:
                visit(statement)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "wasmlet")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "wasmlet":
            if node.module == "wasmlet":
                found.update(f"wasmlet.{a.name}" for a in node.names if a.name != "__version__")
            else:
                found.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def test_every_stage_has_a_rank() -> None:
    top = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    assert top - {"__pycache__"} <= set(RANKS), sorted(top - set(RANKS) - {"__pycache__"})


def test_no_module_imports_from_a_higher_stage() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(("wasmlet", *path.relative_to(PACKAGE).with_suffix("").parts))
        mine = stage(module)
        for target in sorted(imported(ast.parse(path.read_text()))):
            theirs = stage(target)
            if RANKS[theirs] > RANKS[mine] or (theirs == "ops" and mine != "ops" and RANKS[mine] < 5):
                wrong.append(f"{module} ({mine}) imports {target} ({theirs})")
    assert wrong == []


def test_the_check_sees_what_it_must() -> None:
    tree = ast.parse(
        "from wasmlet import oci, __version__\nimport wasmlet.node.status\n"
        "if TYPE_CHECKING:\n    from wasmlet.config import NodeConfig\n"
        "def late():\n    from wasmlet.pod.controller import PodController\n"
    )
    assert imported(tree) == {"wasmlet.oci", "wasmlet.node.status", "wasmlet.pod.controller"}
