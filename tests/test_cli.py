"""The `fda` command in one process (a world of one rank): parsing, exit codes, messages."""
import re
import socket

import pytest
import torch

from fda import cli
from fda.h5log import open_log


def test_settings_may_come_before_or_after_options():
    parser = cli.build_parser()
    args, extra = parser.parse_known_args(["train", "theta=2", "--out", "x", "seed=3"])
    assert args.out == "x" and args.settings == ["theta=2"] and extra == ["seed=3"]


def test_unknown_options_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--bogus"])
    assert e.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["data", "fetch", "mnist", "seed=1"])  # fetch takes no settings


def test_a_bad_setting_exits_2_with_one_line(tmp_path, capsys):
    assert cli.main(["train", "--out", str(tmp_path / "r"), "theta=-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fda: error: ") and "theta" in err[0]
    assert not (tmp_path / "r").exists()


def test_resume_names_the_directory_once(tmp_path, capsys):
    assert cli.main(["train", "--resume", str(tmp_path / "a"), "--out", str(tmp_path / "b")]) == 2
    assert "give the run directory once" in capsys.readouterr().err


def test_a_device_this_machine_lacks_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["train", "--no-progress", "--out", str(tmp_path / "r"), "device=cuda"]) == 2
    assert capsys.readouterr().err.strip() == ("fda: error: device=cuda, but torch sees no CUDA device on "
                                               + socket.gethostname())


def test_a_short_run_prints_its_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--no-progress", "--out", str(out), "dataset=synthetic", "model=mlp", "threads=1",
                     "max_steps=4", "eval_every=2"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.match(r"fda: fda\(monitor=sketch.*\) \| K=1 \| final test_acc [0-9.]+ \| steps 4 \| ", line), line
    with open_log(out) as f:
        assert f.attrs["status"] == "completed" and list(f["steps/step"][()]) == [1, 2, 3, 4]
    assert cli.main(["train", "--no-progress", "--out", str(out), "dataset=synthetic", "model=mlp",
                     "max_steps=4"]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_data_info_and_fetch(capsys):
    assert cli.main(["data", "info", "dataset=synthetic", "K=3", "partition=label"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dataset   synthetic: 4096 train / 1024 test") and "3 workers" in out
    assert cli.main(["data", "fetch", "synthetic"]) == 2
    assert "is generated, there is nothing to fetch" in capsys.readouterr().err
    assert cli.main(["data", "info", "dataset=nope"]) == 2
