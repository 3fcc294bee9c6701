"""The event recorder: asynchronous, rate-limited, repeats counted on one event."""

from __future__ import annotations

import threading
from typing import Any

from wasmlet.kube import events
from wasmlet.kube.client import ApiError

POD = {"metadata": {"name": "web", "namespace": "default", "uid": "u-1"}}


class FakeApi:
    """Stores events like the apiserver: POST names them, merge-PATCH updates, 404 when gone."""

    def __init__(self) -> None:
        self.stored: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.gate = threading.Event()
        self.gate.set()

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.gate.wait()
        self.calls.append("POST")
        name = f"web.{len(self.stored)}"
        stored = {**body, "metadata": {**body["metadata"], "name": name}}
        self.stored[name] = stored
        return stored

    def patch(self, path: str, body: dict[str, Any], patch_type: str) -> dict[str, Any]:
        self.calls.append("PATCH")
        name = path.rsplit("/", 1)[1]
        if name not in self.stored:
            raise ApiError("PATCH", path, 404, {"message": "not found"})
        self.stored[name].update(body)
        return self.stored[name]


def recorder(api: FakeApi, **kwargs: Any) -> events.EventRecorder:
    return events.EventRecorder(api, "wasmlet", "node-1", **kwargs)  # type: ignore[arg-type]


def test_an_event_names_the_object_the_source_and_the_cause() -> None:
    api = FakeApi()
    rec = recorder(api)
    rec.event(POD, "Warning", "FailedMount", 'configmap "cfg" not found')
    assert rec.flush(5)
    assert len(api.stored) == 1
    stored = next(iter(api.stored.values()))
    assert stored["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "web",
        "namespace": "default",
        "uid": "u-1",
    }
    assert stored["source"] == {"component": "wasmlet", "host": "node-1"}
    assert (stored["type"], stored["reason"], stored["count"]) == ("Warning", "FailedMount", 1)
    rec.close()


def test_repeats_are_counted_on_the_stored_event() -> None:
    api = FakeApi()
    rec = recorder(api)
    for _index in range(5):
        rec.event(POD, "Warning", "BackOff", "Back-off restarting failed container main")
    rec.event(POD, "Normal", "Started", "Started container main")
    assert rec.flush(5)
    assert api.calls == ["POST", "PATCH", "PATCH", "PATCH", "PATCH", "POST"]
    counts = sorted(e["count"] for e in api.stored.values())
    assert counts == [1, 5]
    rec.close()


def test_a_repeat_of_an_event_that_expired_is_posted_again() -> None:
    api = FakeApi()
    rec = recorder(api)
    rec.event(POD, "Warning", "BackOff", "again")
    assert rec.flush(5)
    api.stored.clear()  # the apiserver's event TTL (1 h) removed it
    rec.event(POD, "Warning", "BackOff", "again")
    assert rec.flush(5)
    assert api.calls == ["POST", "PATCH", "POST"]
    assert len(api.stored) == 1
    rec.close()


def test_recording_returns_at_once_and_a_full_queue_drops() -> None:
    api = FakeApi()
    api.gate.clear()  # the apiserver does not answer
    rec = recorder(api)
    for index in range(events.QUEUE_LIMIT + 10):
        rec.event(POD, "Normal", "Started", f"event {index}")
    assert 9 <= rec.dropped <= 10  # one may already be on its way
    api.gate.set()
    rec.close()


def test_the_rate_is_limited_after_the_burst() -> None:
    now = [0.0]
    bucket = events.TokenBucket(qps=50, burst=100, clock=lambda: now[0])
    for _index in range(100):
        assert bucket.wait_time() == 0
        bucket.take()
    assert abs(bucket.wait_time() - 0.02) < 1e-9
    now[0] += 0.02
    assert bucket.wait_time() == 0
    bucket.take()
    now[0] += 100
    bucket.wait_time()
    for _index in range(100):  # never more than the burst saved up
        assert bucket.wait_time() == 0
        bucket.take()
    assert bucket.wait_time() > 0


def test_qps_zero_means_no_limit() -> None:
    bucket = events.TokenBucket(qps=0, burst=1, clock=lambda: 0.0)
    for _index in range(1000):
        assert bucket.wait_time() == 0
        bucket.take()
