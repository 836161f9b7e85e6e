"""Graceful preemption: SIGTERM or SIGUSR1 stop the run at the next step, resumably.

SLURM sends SIGTERM at the time limit, on `scancel` and on preemption, and a chosen signal
some time before the limit (`--signal=USR1@180`). After `install()`:

- the first SIGTERM or SIGUSR1 sets a flag on the rank that receives it. For a strategy that
  checks (fda, kamp, fda_opt) `Synchronizer.step` carries the flag in the head of the step's
  state Allreduce, which runs anyway (no extra collective); a schedule (synchronous, fedavg,
  diloco, fedopt) makes no collective between syncs and uses the stop agreement of
  `fda.comm.stops` instead. Either way every rank learns at the same step that some rank was
  signalled, and `fda train` checkpoints that step, closes the log with status=interrupted and
  exits with RESUMABLE_EXIT;
- a second signal within REPEAT_WINDOW_S of the first is the same request: at the time limit
  and on preemption slurmd sends SIGTERM twice, milliseconds apart;
- a signal after that window, or a third one, ends the process at once (exit 128 + the signal
  number), also while its main thread is blocked in a collective or a file system call: the
  signals are counted by a thread reading Python's wakeup fd, which the C-level handler writes
  immediately, whereas Python handlers only run when the main thread gets back to the
  interpreter. Before it exits, the process unlinks the MPI shared-memory segments it maps
  (MPICH's /dev/shm/mpich_shm_*): MPICH names them after the job and step, so a requeued job
  would reopen a dead job's segment and hang in MPI_Init;
- after `abandon()` (the run is failing and the job is being aborted) any signal ends the
  process at once, without promising a checkpoint.
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
REPEAT_WINDOW_S = 1.0  # a second signal this soon after the first is the same request
# shared-memory files MPI libraries map: MPICH's (named after the job and step, so a requeued job
# would find them again), Open MPI 4's and 5's (named after mpirun's job id: they would only leak)
MPI_SHM_PREFIXES = ("mpich_shm_", "vader_segment.", "sm_segment.")


class _State:
    requested = False
    signal_name = ""
    at = 0.0  # time.monotonic() of the first signal
    abandoned = ""  # why the run is being aborted (see abandon)


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


def abandon(reason: str) -> None:
    """The run is failing and the job is being aborted: a signal now ends the process at once
    (e.g. Open MPI's SIGTERM to the surviving ranks after MPI_Abort), with no checkpoint promised."""
    _state.abandoned = reason or "the job is being aborted"


def abandoned() -> bool:
    """True once `abandon()` was called: the job is failing."""
    return bool(_state.abandoned)


def what_to_do(count: int, since_first_s: float, abandoned: bool) -> str:
    """For the count-th signal, since_first_s after the first: "stop" (checkpoint at the next step's
    end), "same" (a repeat of that request) or "exit" (now)."""
    if abandoned:
        return "exit"
    if count == 1:
        return "stop"
    if count == 2 and since_first_s <= REPEAT_WINDOW_S:
        return "same"
    return "exit"


def mapped_mpi_shm_files(maps_text: str) -> list[str]:
    """The MPI shared-memory files in a /proc/PID/maps text (each once, in order of appearance)."""
    found: list[str] = []
    for line in maps_text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[5].endswith(" (deleted)"):
            continue
        path = fields[5].strip()
        if path.startswith("/dev/shm/") and os.path.basename(path).startswith(MPI_SHM_PREFIXES) \
                and path not in found:
            found.append(path)
    return found


def unlink_mpi_shm() -> list[str]:
    """Unlink the MPI shared-memory files this process maps (the other ranks keep their mappings);
    returns the ones removed."""
    try:
        with open("/proc/self/maps") as f:
            paths = mapped_mpi_shm_files(f.read())
    except OSError:
        return []
    removed = []
    for path in paths:
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:  # another rank of the node was first
            pass
    return removed


def _on_signal(signum, frame) -> None:  # runs in the main thread, when Python gets there
    request(signal.Signals(signum).name)


class _Counter(threading.Thread):
    """Reads the wakeup fd: one byte per signal, written by the C handler at once."""

    def __init__(self, fd: int, label: str):
        super().__init__(daemon=True, name="fda-signal-counter")
        self.fd, self.label, self.count = fd, label, 0
        self.first_at = 0.0
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
        now = time.monotonic()
        if self.count == 1:
            self.first_at = now
        action = what_to_do(self.count, now - self.first_at, bool(_state.abandoned))
        if action == "stop":
            request(name)
            print(f"fda: {self.label} got {name}: stopping after this step with a checkpoint "
                  f"(exit code {RESUMABLE_EXIT}); a signal more than {REPEAT_WINDOW_S:g} s later ends it at once",
                  file=sys.stderr, flush=True)
        elif action == "same":
            print(f"fda: {self.label} got {name} again within {REPEAT_WINDOW_S:g} s: the same stop request",
                  file=sys.stderr, flush=True)
        else:
            self._exit_now(signum, name)

    def _exit_now(self, signum: int, name: str) -> None:
        if _state.abandoned:
            print(f"fda: {self.label} got {name} while the job is aborted ({_state.abandoned}): exiting now",
                  file=sys.stderr, flush=True)
        else:
            print(f"fda: {self.label} got another signal ({name}): exiting now, without a checkpoint",
                  file=sys.stderr, flush=True)
        unlink_mpi_shm()
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
    _state.requested, _state.signal_name, _state.at, _state.abandoned = False, "", 0.0, ""
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
