"""The pods bound to this node, from the apiserver: one list, then one watch
(``spec.nodeName=<node>``) resumed from its resourceVersion, relisted on 410 Gone and retried
with back-off when the apiserver is away -- kubelet's API pod source."""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from wasmlet.kube.client import ApiError, Client
from wasmlet.pod.run import pod_key

log = logging.getLogger(__name__)

RETRY_MAX = 30.0


class PodSink(Protocol):
    """What is told of the pods (:class:`wasmlet.pod.controller.PodController`)."""

    def observe(self, pod: dict[str, Any]) -> None: ...

    def gone(self, key: str) -> None: ...

    def listed_all(self, keys: set[str]) -> None: ...


class PodWatch:
    def __init__(self, client: Client, node_name: str, sink: PodSink, stop: threading.Event) -> None:
        self.client = client
        self.node_name = node_name
        self.sink = sink
        self.stop = stop
        self.params = {"fieldSelector": f"spec.nodeName={node_name}"}

    def start(self) -> None:
        threading.Thread(target=self.run, name=f"pod-watch:{self.node_name}", daemon=True).start()

    def _list(self) -> str:
        listing = self.client.get("/api/v1/pods", self.params)
        seen = set()
        for pod in listing.get("items") or []:
            self.sink.observe(pod)
            seen.add(pod_key(pod))
        self.sink.listed_all(seen)
        return str(listing["metadata"]["resourceVersion"])

    def run(self) -> None:
        version = ""
        delay = 1.0
        while not self.stop.is_set():
            try:
                if not version:
                    version = self._list()
                for event in self.client.watch("/api/v1/pods", self.params, version):
                    obj = event["object"]
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if event["type"] in {"ADDED", "MODIFIED"}:
                        self.sink.observe(obj)
                    elif event["type"] == "DELETED":
                        self.sink.gone(pod_key(obj))
                    if self.stop.is_set():
                        return
                delay = 1.0
            except ApiError as exc:
                if exc.status == 410:
                    log.info("pod watch expired (410 Gone); relisting")
                    version = ""
                    continue
                log.warning("pod watch failed: %s; retrying in %.0fs", exc, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, RETRY_MAX)
            except Exception as exc:  # transport errors: apiserver down, connection reset
                log.warning("pod watch interrupted: %s; retrying in %.0fs", exc, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, RETRY_MAX)
