"""fda.sync.records: the log directory's checks and the rows."""
import math

import pytest

from fda.config import ConfigError
from fda.h5log import LOG_NAME, open_log
from fda.sync.accounting import Accounting
from fda.sync.records import RunRecords, eval_row, step_row

ATTRS = lambda: {"config": "{}", "workers": 1}  # noqa: E731


def _open(path, world, **kw):
    return RunRecords.open(path, world, rank=0, attrs=ATTRS, flush_every=10, resume_step=kw.get("resume_step"),
                           overwrite=kw.get("overwrite", False))


def test_rows_reach_the_log_and_the_summary_its_attributes(tmp_path, world):
    records = _open(tmp_path / "run", world)
    acc = Accounting(world.bytes)
    acc.count_check(2, 1)
    times = {"compute": 0.1, "monitor": 0.2, "comm": 0.3}
    records.step(step_row(step=1, epoch=0.5, loss=1.0, bound=2.0, var_exact=math.nan, theta=3.0, synced=True,
                          accounting=acc, times=times))
    records.evaluation(eval_row(step=1, epoch=0.5, test_acc=0.75, test_loss=0.5, accounting=acc, wall_time=1.0))
    records.close("interrupted", "stopped", {"steps": 1, "strategy": "x"}, final_test_acc=0.75, stopped_at_step=1)
    with open_log(tmp_path / "run" / LOG_NAME) as f:
        assert f["steps/synced"][()].tolist() == [1] and f["steps/comm_bytes"][()].tolist() == [8]
        assert f["evals/test_acc"][()].tolist() == [0.75]
        assert f.attrs["status"] == "interrupted" and int(f.attrs["stopped_at_step"]) == 1
        assert int(f.attrs["summary_steps"]) == 1 and float(f.attrs["summary_final_test_acc"]) == 0.75


def test_a_directory_holding_a_run_is_refused_with_the_api_arguments(tmp_path, world):
    _open(tmp_path, world).close("completed", "", {}, final_test_acc=math.nan, stopped_at_step=0)
    with pytest.raises(ConfigError, match="already holds a run") as err:
        _open(tmp_path, world)
    assert "resume_step=" in str(err.value) and "overwrite=True" in str(err.value) and "--" not in str(err.value)
    _open(tmp_path, world, overwrite=True).fail("replaced")


def test_resuming_needs_a_run(tmp_path, world):
    with pytest.raises(ConfigError, match="no run to resume"):
        _open(tmp_path / "empty", world, resume_step=3)


def test_other_ranks_and_runs_without_a_log_record_nothing(tmp_path, world):
    records = RunRecords.open(tmp_path, world, rank=1, attrs=ATTRS, flush_every=1, resume_step=None, overwrite=False)
    assert not records.active and not (tmp_path / LOG_NAME).exists()
    records.step({"step": 1})
    records.close("completed", "", {}, final_test_acc=0.0, stopped_at_step=1)
