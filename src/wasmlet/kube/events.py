"""Events, recorded as kubelet's event recorder does: off the caller's path, rate-limited, aggregated.

kubelet hands events to client-go's broadcaster and goes on; a goroutine posts them at most
``eventRecordQPS`` (50) a second with a burst of ``eventBurst`` (100), keeps up to 1000 waiting
and drops what does not fit, and counts a repeat of the same event (same object, type, reason
and message) on the event already stored instead of creating another (``count``, ``lastTimestamp``,
as ``kubectl describe`` shows "x5 over 2m"). :class:`EventRecorder` does the same, so a burst of
pod starts costs the pod workers no apiserver round trip per event, and a crash-looping pod does
not fill etcd with copies of one event.

Events about a cluster-scoped object (the Node) go to the ``default`` namespace with no
namespace in ``involvedObject``, as client-go's ``makeEvent`` does for kubelet's node events.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from wasmlet.kube.client import ApiError, Client, timestamp

log = logging.getLogger(__name__)

QPS = 50  # kubelet's eventRecordQPS default (events a second; 0: no limit)
BURST = 100  # kubelet's eventBurst default
QUEUE_LIMIT = 1000  # client-go's maxQueuedEvents
SERIES_WINDOW = 600.0  # repeats within 10 minutes count on one event (client-go's aggregation window)
SERIES_LIMIT = 4096  # events remembered for counting repeats (client-go's LRU holds 4096)

Key = tuple[str, str, str, str]  # involved object uid, type, reason, message


class EventSink(Protocol):
    """Where events about an object go: :class:`EventRecorder`, or a test's fake."""

    def event(self, obj: dict[str, Any], kind: str, reason: str, message: str) -> None: ...


class TokenBucket:
    """``qps`` tokens a second, at most ``burst`` saved up (``qps`` 0: no limit)."""

    def __init__(self, qps: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.qps, self.burst, self._clock = qps, burst, clock
        self._tokens = float(burst)
        self._stamp = clock()

    def wait_time(self) -> float:
        """Seconds until a token is available (0: take it now)."""
        if self.qps <= 0:
            return 0.0
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.qps)
        self._stamp = now
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.qps

    def take(self) -> None:
        self._tokens -= 1


class EventRecorder:
    """Posts events for one component (``source.component``) of one node, on its own thread."""

    def __init__(
        self, client: Client, component: str, host: str, *, qps: float = QPS, burst: int = BURST
    ) -> None:
        self.client = client
        self.component = component
        self.host = host
        self.dropped = 0
        self._bucket = TokenBucket(qps, burst)
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        # per repeated event: (monotonic time it was last seen, its stored name, its count)
        self._series: collections.OrderedDict[Key, tuple[float, str, int]] = collections.OrderedDict()
        self._ready = threading.Condition()
        self._closed = False
        self._sending = False
        self._thread: threading.Thread | None = None

    def event(self, obj: dict[str, Any], kind: str, reason: str, message: str) -> None:
        """Record an event about ``obj`` (a pod, or a cluster-scoped object such as the Node:
        then in the ``default`` namespace); returns at once."""
        meta = obj["metadata"]
        namespace = meta.get("namespace") or ""
        involved = {
            "apiVersion": obj.get("apiVersion", "v1"),
            "kind": obj.get("kind", "Pod"),
            "name": meta["name"],
            "namespace": namespace,
            "uid": meta.get("uid") or "",
        }
        now = timestamp()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace or "default"},
            # ObjectReference's fields are omitempty: a node's reference has no namespace.
            "involvedObject": {k: v for k, v in involved.items() if v},
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": self.component, "host": self.host},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": self.component,
            "reportingInstance": self.host,
        }
        with self._ready:
            if self._closed:
                return
            if len(self._queue) >= QUEUE_LIMIT:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning("event queue full (%d waiting): %d events dropped", QUEUE_LIMIT, self.dropped)
                return
            self._queue.append(event)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="event recorder", daemon=True)
                self._thread.start()
            self._ready.notify()

    def flush(self, timeout: float) -> bool:
        """Wait until every event recorded so far was sent (tests, shutdown); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._ready:
            while self._queue or self._sending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._ready.wait(min(left, 0.05))
        return True

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
                wait = self._bucket.wait_time()
                if wait > 0:
                    self._ready.wait(wait)
                    continue
                self._bucket.take()
                event = self._queue.popleft()
                self._sending = True
            try:
                self._send(event)
            except Exception as exc:  # the apiserver is away: the event is lost, as in client-go
                log.warning(
                    "cannot record event %s for %s: %s",
                    event["reason"],
                    event["involvedObject"]["name"],
                    exc,
                )
            finally:
                with self._ready:
                    self._sending = False
                    self._ready.notify_all()

    def _send(self, event: dict[str, Any]) -> None:
        obj = event["involvedObject"]
        uid = obj.get("uid") or f"{obj['kind']}/{obj.get('namespace', '')}/{obj['name']}"
        key: Key = (uid, event["type"], event["reason"], event["message"])
        namespace = event["metadata"]["namespace"]
        now = time.monotonic()
        seen = self._series.get(key)
        stored: Any = None
        if seen is not None and now - seen[0] < SERIES_WINDOW:
            _since, name, count = seen
            patch = {"count": count + 1, "lastTimestamp": event["lastTimestamp"]}
            try:
                stored = self.client.patch(f"/api/v1/namespaces/{namespace}/events/{name}", patch, "merge")
            except ApiError as exc:
                if exc.status != 404:
                    raise  # 404: the apiserver's event TTL removed it; post it again
        if stored is None:
            stored = self.client.post(f"/api/v1/namespaces/{namespace}/events", event)
        self._remember(key, now, stored)

    def _remember(self, key: Key, seen: float, stored: Any) -> None:
        meta = stored.get("metadata") if isinstance(stored, dict) else None
        if not isinstance(meta, dict) or not meta.get("name"):
            return
        self._series[key] = (seen, str(meta["name"]), int(stored.get("count") or 1))
        self._series.move_to_end(key)
        while len(self._series) > SERIES_LIMIT:
            self._series.popitem(last=False)
