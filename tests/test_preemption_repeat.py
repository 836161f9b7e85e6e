"""Signals as SLURM sends them: slurmd's double SIGTERM is one stop request; a person who insists
still ends the process at once, and then it leaves no MPI shared-memory segment behind."""
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import MPIEXEC, child_env
from fda import preemption

PROBE = """
import importlib.util, sys, threading
spec = importlib.util.spec_from_file_location("preemption", sys.argv[1])
preemption = importlib.util.module_from_spec(spec)
spec.loader.exec_module(preemption)
mode = sys.argv[2]
if mode == "mpi":
    from mpi4py import MPI
    MPI.COMM_WORLD.Barrier()
    with open("/proc/self/maps") as f:
        print("<maps", *preemption.mapped_mpi_shm_files(f.read()), "maps>", flush=True)
if mode == "abandoned":
    preemption.abandon("rank 1 failed")
preemption.install("probe")
print("<ready>", flush=True)
lock = threading.Lock()
lock.acquire()
lock.acquire()  # blocked for good, as a rank in a collective whose peers never come
"""


@pytest.mark.parametrize("count, since, abandoned, action", [
    (1, 0.0, False, "stop"),
    (2, 0.005, False, "same"),                                 # slurmd: 5-20 ms apart
    (2, preemption.REPEAT_WINDOW_S, False, "same"),
    (2, preemption.REPEAT_WINDOW_S + 0.01, False, "exit"),    # a person, later
    (3, 0.01, False, "exit"),                                  # a person, insisting
    (1, 0.0, True, "exit"),                                    # the job is being aborted
])
def test_what_a_signal_does(count, since, abandoned, action):
    assert preemption.what_to_do(count, since, abandoned) == action


def test_mpi_shm_files_named_in_maps():
    maps = "\n".join([
        "7f00-7f10 rw-s 00000000 00:1a 12 /dev/shm/mpich_shm_1a2b_0",
        "7f10-7f20 rw-s 00000000 00:1a 12 /dev/shm/mpich_shm_1a2b_0",
        "7f20-7f30 rw-s 00000000 00:1a 13 /dev/shm/mpich_shm_1a2b_1 (deleted)",
        "7f30-7f40 r-xp 00000000 08:01 99 /usr/lib/libc.so.6",
        "7f40-7f50 rw-s 00000000 00:1a 14 /dev/shm/other_segment",
        "7f50-7f60 rw-p 00000000 00:00 0",
        "7f60-7f70 rw-s 00000000 00:1a 15 /dev/shm/vader_segment.vm.0.320001.1",
    ])
    assert preemption.mapped_mpi_shm_files(maps) == ["/dev/shm/mpich_shm_1a2b_0",
                                                      "/dev/shm/vader_segment.vm.0.320001.1"]


def _start(mode: str):
    return subprocess.Popen([sys.executable, "-c", PROBE, preemption.__file__, mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env())


def _first_lines(stream, n: int, timeout_s: float = 20.0) -> list[str]:
    """The first n lines the probe writes to stream, read unbuffered; a failure after timeout_s."""
    data, deadline = b"", time.monotonic() + timeout_s
    while data.count(b"\n") < n:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([stream], [], [], left)[0], f"the probe said {data!r} in {timeout_s} s"
        chunk = os.read(stream.fileno(), 4096)
        assert chunk, f"the probe ended after saying {data!r}"
        data += chunk
    return data.decode().splitlines()[:n]


def test_slurmds_double_sigterm_is_one_request_and_a_third_signal_ends_it():
    probe = _start("plain")
    try:
        assert probe.stdout.readline().strip() == "<ready>"
        probe.send_signal(signal.SIGTERM)
        time.sleep(0.01)
        probe.send_signal(signal.SIGTERM)
        said = _first_lines(probe.stderr, 2)  # what the probe made of each signal
        assert "probe got SIGTERM: stopping after this step" in said[0], said
        assert "probe got SIGTERM again within" in said[1], said
        assert probe.poll() is None, "two SIGTERMs milliseconds apart must only ask for the stop"
        probe.send_signal(signal.SIGTERM)
        _, err = probe.communicate(timeout=20)
    finally:
        if probe.poll() is None:
            probe.kill()
    assert "probe got another signal (SIGTERM): exiting now" in err
    assert probe.returncode == 128 + signal.SIGTERM


def test_a_signal_after_abandon_exits_without_promising_a_checkpoint():
    probe = _start("abandoned")
    try:
        assert probe.stdout.readline().strip() == "<ready>"
        probe.send_signal(signal.SIGTERM)
        _, err = probe.communicate(timeout=20)
    finally:
        if probe.poll() is None:
            probe.kill()
    assert "with a checkpoint" not in err and "exit code 75" not in err
    assert "got SIGTERM while the job is aborted (rank 1 failed): exiting now" in err
    assert probe.returncode == 128 + signal.SIGTERM


@pytest.mark.slow
def test_the_immediate_exit_leaves_no_mpi_shared_memory_behind():
    job = subprocess.Popen([str(MPIEXEC), "-n", "2", sys.executable, "-c", PROBE, preemption.__file__, "mpi"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, env=child_env(),
                           start_new_session=True)
    try:
        # each rank's "<maps ... maps>" and "<ready>": markers, not lines, since a launcher may
        # interleave the ranks' output in the middle of a line (Open MPI's mpirun does)
        out = ""
        deadline = time.monotonic() + 120
        while out.count("<ready>") < 2 and time.monotonic() < deadline:
            if not select.select([job.stdout], [], [], 1.0)[0]:
                continue
            chunk = os.read(job.stdout.fileno(), 65536)
            if not chunk:
                break
            out += chunk.decode()
        mapped = sorted(set(re.findall(r"/dev/shm/[^\s<>]+", out)))
        assert out.count("<ready>") == 2, (out, job.poll())
        for sig in (signal.SIGUSR1, signal.SIGUSR1):
            job.send_signal(sig)
            time.sleep(preemption.REPEAT_WINDOW_S + 0.5)
        _, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.communicate()
    err = err.decode()
    # The launcher may end the other rank as soon as the first one exits, so at least one rank says it.
    assert err.count("exiting now") >= 1, err[-2000:]
    if not mapped:
        pytest.skip("this MPI maps no /dev/shm/mpich_shm_* segment")
    assert not [p for p in mapped if Path(p).exists()], f"left behind: {mapped}"
