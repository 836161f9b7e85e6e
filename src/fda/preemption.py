"""Graceful preemption: SIGTERM or SIGUSR1 stop the run at the next step, resumably.

SLURM sends SIGTERM at the time limit, on `scancel` and on preemption, and a chosen signal
some time before the limit (`--signal=USR1@180`). After `install()`:

- the first SIGTERM or SIGUSR1 sets a flag on the rank that receives it. `Synchronizer.step`
  carries the flag in the head of the step's state Allreduce, which runs anyway (no extra
  collective), so every rank sees at the same step that some rank was signalled, and
  `fda train` checkpoints that step, closes the log with status=interrupted and exits with
  RESUMABLE_EXIT;
- a second one ends the process at once (exit 128 + the signal number), also while its main
  thread is blocked in a collective or a file system call: the signals are counted by a thread
  reading Python's wakeup fd, which the C-level handler writes immediately, whereas Python
  handlers only run when the main thread gets back to the interpreter.
"""
from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time

RESUMABLE_EXIT = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure; run it again to continue
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class _State:
    requested = False
    signal_name = ""
    at = 0.0  # time.monotonic() of the first signal


_state = _State()
_installed: dict = {}


def requested() -> bool:
    """True once this process got SIGTERM or SIGUSR1 (or `request()` was called)."""
    return _state.requested


def request(name: str = "request") -> None:
    """Ask for a graceful stop as a signal would (tests; also usable by a user's own watchdog)."""
    if not _state.requested:
        _state.requested, _state.signal_name, _state.at = True, name, time.monotonic()


def signal_name() -> str:
    return _state.signal_name


def _on_signal(signum, frame) -> None:  # runs in the main thread, when Python gets there
    request(signal.Signals(signum).name)


class _Counter(threading.Thread):
    """Reads the wakeup fd: one byte per signal, written by the C handler at once."""

    def __init__(self, fd: int, label: str):
        super().__init__(daemon=True, name="fda-signal-counter")
        self.fd, self.label, self.count = fd, label, 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 512)
            except BlockingIOError:
                continue
            for signum in data:
                if signum in SIGNALS:
                    self._count(signum)

    def _count(self, signum: int) -> None:
        name = signal.Signals(signum).name
        self.count += 1
        if self.count == 1:
            request(name)
            print(f"fda: {self.label} got {name}: stopping after this step with a checkpoint "
                  f"(exit code {RESUMABLE_EXIT}); a second signal ends it at once", file=sys.stderr, flush=True)
            return
        print(f"fda: {self.label} got a second signal ({name}): exiting now", file=sys.stderr, flush=True)
        os._exit(128 + signum)


def install(label: str = "this process") -> None:
    """Handle SIGTERM and SIGUSR1 as above (main thread only; a second call does nothing)."""
    if _installed:
        return
    r, w = os.pipe()
    os.set_blocking(w, False)
    os.set_blocking(r, False)
    previous = {s: signal.signal(s, _on_signal) for s in SIGNALS}
    old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    counter = _Counter(r, label)
    counter.start()
    _installed.update(previous=previous, old_fd=old_fd, fds=(r, w), counter=counter)


def uninstall() -> None:
    """Restore the previous handlers and forget any request (main thread only)."""
    _state.requested, _state.signal_name, _state.at = False, "", 0.0
    if not _installed:
        return
    signal.set_wakeup_fd(_installed["old_fd"])
    for s, h in _installed["previous"].items():
        signal.signal(s, h)
    counter = _installed["counter"]
    counter.halt.set()
    counter.join(timeout=1.0)
    for fd in _installed["fds"]:
        os.close(fd)
    _installed.clear()
