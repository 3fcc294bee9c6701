"""The ``wasmlet`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from wasmlet import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wasmlet", description="A kubelet for WebAssembly workloads.")
    parser.add_argument("--version", action="version", version=f"wasmlet {__version__}")
    parser.parse_args(argv)
    print(
        "wasmlet: the node agent is not part of this release yet; see `wasmlet --version`.", file=sys.stderr
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
