"""stall_timeout: a rank that hangs before the step's collective (here: asleep in its data loader) is
named on every rank within stall_timeout + a few seconds, and the job ends with status=failed."""
import time

import pytest

from conftest import kill_job, read_log, start_fda

STALL_TIMEOUT = 3
NAMED_WITHIN_S = STALL_TIMEOUT + 12  # detection, one query round, the abort; generous for a loaded machine


@pytest.mark.slow
@pytest.mark.parametrize("ranks,late", [(2, 1), (4, 0)])
def test_a_rank_asleep_in_its_data_loader_is_named(tmp_path, ranks, late):
    run = tmp_path / "run"
    proc = start_fda("train", "--no-progress", "dataset=synthetic", "model=mlp", "threads=1", "max_steps=200",
                     "log_flush_every=1", f"stall_timeout={STALL_TIMEOUT}", "fail_mode=stall", "fail_at_step=5",
                     f"fail_rank={late}", "--out", run, n=ranks)
    try:
        deadline = time.monotonic() + 240
        while not (run / "metrics.h5").exists() or read_log(run)["steps"]["step"].size < 4:
            assert proc.poll() is None and time.monotonic() < deadline, "the run did not reach step 4"
            time.sleep(0.05)
        reached = time.monotonic()  # step 4 is logged: the late rank is about to fall asleep
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - reached
    finally:
        if proc.poll() is None:
            kill_job(proc)
    err = err.decode()
    assert proc.returncode != 0
    assert took < NAMED_WITHIN_S, f"{took:.1f} s"
    verdict = (f"stall: rank {late} did not reach the state Allreduce at step 5 within stall_timeout=3 s "
               f"(rank {late} is at step 4, outside any collective")
    for r in range(ranks):  # every rank says it
        assert f"fda: rank {r}: {verdict}" in err, err[-3000:]
    log = read_log(run)
    assert log["attrs"]["status"] == "failed"
    assert verdict in log["attrs"]["error"]
    assert list(log["steps"]["step"]) == [1, 2, 3, 4]
