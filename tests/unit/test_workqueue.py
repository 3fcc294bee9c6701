from __future__ import annotations

import threading
import time

from wasmlet.workqueue import WorkQueue


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
