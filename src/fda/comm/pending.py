"""A non-blocking Allreduce in flight: started at one step, waited on some steps later.

`test()` asks MPI whether it has completed; every call also drives MPI's progress, which an
MPI library without an asynchronous progress thread (MPICH's default) needs to move a
non-blocking collective along while the rank computes. `ready_before_wait` says whether it had
completed by the last `test()` before `wait()`: what shows that the exchange overlapped the
compute instead of being paid at the wait.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


class PendingAllreduce:
    """`finish`, if given, runs once at the end of `wait()` (a staged buffer copied back to its tensor)."""

    def __init__(self, request, buffer, wait: Callable, finish: Callable[[], None] | None = None):
        self._request, self._buffer, self._wait, self._finish = request, buffer, wait, finish
        self._done = False
        self.ready_before_wait = False

    def test(self) -> bool:
        if not self._done:
            self._done = bool(self._request.Test())
        return self._done

    def wait(self) -> np.ndarray:
        """The reduced values (the same on every rank)."""
        self.ready_before_wait = self._done
        if not self._done:
            self._wait(self._request)
            self._done = True
        if self._finish is not None:
            self._finish()
            self._finish = None
        return self._buffer
