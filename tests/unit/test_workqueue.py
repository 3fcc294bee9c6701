from __future__ import annotations

import threading
import time

from wasmlet.kube.workqueue import WorkQueue


def test_a_key_added_twice_is_processed_once() -> None:
    queue = WorkQueue()
    queue.add("a")
    queue.add("a")
    queue.add("b")
    assert queue.get() == "a"
    queue.done("a")
    assert queue.get() == "b"
    queue.done("b")
    queue.close()
    assert queue.get() is None


def test_a_key_added_while_processing_runs_again_after_done() -> None:
    queue = WorkQueue()
    queue.add("a")
    assert queue.get() == "a"
    queue.add("a")  # dirty: not handed out while in progress
    got: list[str | None] = []
    t = threading.Thread(target=lambda: got.append(queue.get()))
    t.start()
    t.join(0.2)
    assert got == []
    queue.done("a")
    t.join(2)
    assert got == ["a"]
    queue.close()


def test_add_after_delivers_after_the_delay() -> None:
    queue = WorkQueue()
    start = time.monotonic()
    queue.add_after("later", 0.3)
    queue.add_after("sooner", 0.1)
    assert queue.get() == "sooner"
    queue.done("sooner")
    assert queue.get() == "later"
    assert time.monotonic() - start >= 0.29
    queue.close()


def _drain(queue: WorkQueue, seconds: float) -> list[str]:
    """Every key handed out within ``seconds``."""
    got: list[str] = []
    deadline = time.monotonic() + seconds

    def work() -> None:
        while time.monotonic() < deadline:
            key = queue.get()
            if key is None:
                return
            got.append(key)
            queue.done(key)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    time.sleep(seconds)
    queue.close()
    t.join(1)
    return got


def test_a_key_waits_on_one_timer_the_earliest() -> None:
    queue = WorkQueue()
    for _round in range(50):  # a controller asking for a later look on every pass
        queue.add_after("pod", 0.2)
    queue.add_after("pod", 0.1)  # an earlier one replaces them
    queue.add_after("pod", 0.3)  # a later one is ignored while an earlier is pending
    start = time.monotonic()
    got = _drain(queue, 0.6)
    assert got == ["pod"]
    assert time.monotonic() - start >= 0.59


def test_a_key_can_wait_again_once_its_timer_fired() -> None:
    queue = WorkQueue()
    queue.add_after("pod", 0.05)
    assert queue.get() == "pod"
    queue.done("pod")
    queue.add_after("pod", 0.05)
    assert queue.get() == "pod"
    queue.done("pod")
    queue.close()
