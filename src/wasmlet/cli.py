"""The ``wasmlet`` command."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from wasmlet import config as node_config
from wasmlet.agent import Agent
from wasmlet.kube.client import ApiError
from wasmlet.network.interface import InterfaceError
from wasmlet.node.bootstrap import BootstrapError


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
    )
    try:
        config = node_config.load(argv)
    except node_config.ConfigError as exc:
        print(f"wasmlet: error: {exc}", file=sys.stderr)
        return 2
    agent = Agent(config)
    agent.install_signal_handlers()
    try:
        agent.run()
    except (BootstrapError, InterfaceError) as exc:
        print(f"wasmlet: error: {exc}", file=sys.stderr)
        return 1
    except (ApiError, OSError) as exc:  # OSError includes TransportError
        print(f"wasmlet: error: node {config.node_name}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
