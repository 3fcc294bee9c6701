"""The output pump: pipes written through their /proc path, read by one thread."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from wasmlet.runtime import outputs


def _write(pipe: outputs.Pipe, data: bytes) -> None:
    """Write as wasmtime does: open the pipe by its path, write, close."""
    with Path(pipe.path).open("wb") as handle:
        pipe.opened()
        handle.write(data)


def test_many_pipes_deliver_everything_in_order_then_finish() -> None:
    pump = outputs.OutputPump()
    received: dict[int, list[bytes]] = {index: [] for index in range(50)}
    pipes = [pump.pipe(received[index].append, f"pipe {index}") for index in range(50)]
    payloads = {index: b"".join(b"%d line %d\n" % (index, n) for n in range(3000)) for index in range(50)}
    writers = [threading.Thread(target=_write, args=(pipes[i], payloads[i])) for i in range(50)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    for index, pipe in enumerate(pipes):
        assert pipe.finish(10)
        assert b"".join(received[index]) == payloads[index]
        assert all(len(chunk) <= outputs.CHUNK for chunk in received[index])
    pump.close()


def test_read_ends_are_closed_after_end_of_file() -> None:
    pump = outputs.OutputPump()
    pipe = pump.pipe(lambda chunk: None, "one")
    _write(pipe, b"hello\n")
    assert pipe.finish(5)
    with pytest.raises(OSError):
        os.fstat(pipe.read_fd)
    pump.close()


def test_a_writer_that_never_closes_is_abandoned_after_the_timeout() -> None:
    pump = outputs.OutputPump()
    pipe = pump.pipe(lambda chunk: None, "stuck")
    held = os.open(pipe.path, os.O_WRONLY)  # someone keeps a write end open
    try:
        assert not pipe.finish(0.2)
        assert pipe.done.wait(5)  # the reader let go of it
    finally:
        os.close(held)
        pump.close()


def test_a_failing_consumer_drops_output_but_the_pipe_still_finishes() -> None:
    pump = outputs.OutputPump()

    def broken(chunk: bytes) -> None:
        raise RuntimeError("disk full")

    pipe = pump.pipe(broken, "broken")
    _write(pipe, b"x" * 200_000)
    assert pipe.finish(5)
    pump.close()


def test_a_closed_pump_refuses_new_pipes() -> None:
    pump = outputs.OutputPump()
    pump.pipe(lambda chunk: None, "first").finish(0)
    pump.close()
    with pytest.raises(RuntimeError, match="closed"):
        pump.pipe(lambda chunk: None, "late")
