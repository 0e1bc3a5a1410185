"""Ctrl-C (SIGINT) and SIGTERM as a request to stop at the next safe point, not mid-write.

While `stop_requests()` is active, the signals only set a flag; the training loop checks it after
each batch and raises `Interrupted`, so the files on disk are always those of the last finished
epoch and the summary says the run was interrupted. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from cnnsweep.records import RunStatus

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The run or sweep was asked to stop by a signal."""

    run_status = RunStatus.INTERRUPTED  # how a run stopped by this error ends

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal_number)  # in args, so the error pickles across processes
        self.signal_number = signal_number

    def __str__(self) -> str:
        return f"interrupted by {signal.Signals(self.signal_number).name}"

    @property
    def exit_code(self) -> int:
        return 128 + self.signal_number  # the shell's convention for a process ended by a signal


class StopRequests:
    """The first stop signal received, if any."""

    def __init__(self) -> None:
        self.signal_number: int | None = None

    def check(self) -> None:
        """Raise Interrupted if a stop signal arrived."""
        if self.signal_number is not None:
            raise Interrupted(self.signal_number)


@contextmanager
def stop_requests() -> Iterator[StopRequests]:
    """Turn SIGINT/SIGTERM into a flag for the duration of the block (main thread only)."""
    requests = StopRequests()
    if threading.current_thread() is not threading.main_thread():
        yield requests  # signal handlers can only be set from the main thread
        return

    def handle(signal_number: int, frame: object) -> None:
        if requests.signal_number is not None and signal_number == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        requests.signal_number = signal_number

    previous = {number: signal.signal(number, handle) for number in STOP_SIGNALS}
    try:
        yield requests
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
