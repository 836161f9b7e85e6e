"""Bad input costs seconds: each case exits 2 on a 2-rank run, with one message and no traceback.

The table runs in ONE `mpiexec -n 2` job that calls `fda.cli.main(argv)` case after case on
both ranks (capturing each rank's stdout/stderr), so the ~20 cases cost one launch; a few
cases are also launched as real `mpiexec ... fda train` processes to check the exit status.
"""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from _helpers import write_idx_dataset


REPO = Path(__file__).resolve().parents[1]
from conftest import MPIEXEC, child_env  # noqa: E402
ENV = child_env()
BASE = ["dataset=synthetic", "model=mlp", "threads=1", "max_steps=2"]

DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys, traceback
    from mpi4py import MPI
    from fda import cli

    cases = json.loads(open(sys.argv[1]).read())
    results = []
    for case in cases:
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                rc = cli.main(case["argv"])
            except SystemExit as e:
                rc = e.code
            except BaseException:
                traceback.print_exc()
                rc = "exception"
        results.append({"id": case["id"], "rc": rc, "stderr": err.getvalue(), "stdout": out.getvalue()})
        MPI.COMM_WORLD.Barrier()
    rank = MPI.COMM_WORLD.Get_rank()
    open(f"{sys.argv[2]}/rank{rank}.json", "w").write(json.dumps(results))
""")


def _cases(tmp: Path) -> list[tuple[str, list[str], int, str]]:
    """(id, argv, expected exit code, expected message fragment); setup cases expect 0."""
    empty = tmp / "empty"
    empty.mkdir()
    trunc = tmp / "truncated"
    write_idx_dataset(trunc, gz=True)
    # a plain idx file is found before the .gz one: its header says 60000 x 28 x 28, the body is short
    header = (0x00000803).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (60000, 28, 28))
    (trunc / "train-images-idx3-ubyte").write_bytes(header + bytes(1000))
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("model: mlp\n  lr: [0.1\n")
    twice = tmp / "twice.yaml"
    twice.write_text("data:\n  batch_size: 8\nlocal:\n  batch_size: 16\n")
    run, plain = tmp / "run", tmp / "plain"
    out = ["--out", str(tmp / "new")]
    return [
        ("setup: a run with a checkpoint",
         ["train", "--no-progress", *BASE, "checkpoint_every=1", "--out", str(run)], 0, "fda:"),
        ("setup: a run without checkpoints", ["train", "--no-progress", *BASE, "--out", str(plain)], 0, "fda:"),
        ("unknown key, with a suggestion", ["train", *BASE, "thetta=1", *out], 2,
         "unknown setting 'thetta' (did you mean 'theta'?)"),
        ("wrong type", ["train", *BASE, "batch_size=abc", *out], 2, "batch_size='abc'"),
        ("wrong type for theta", ["train", *BASE, "theta=[1]", *out], 2, "theta=[1]: must be a non-negative number"),
        ("negative theta", ["train", *BASE, "theta=-1", *out], 2, "theta=-1: must be a finite number >= 0"),
        ("NaN theta", ["train", *BASE, "theta=nan", *out], 2, "theta='nan': must be a finite number >= 0"),
        ("batch_size 0", ["train", *BASE, "batch_size=0", *out], 2, "batch_size=0: Input should be greater than"),
        ("negative batch_size", ["train", *BASE, "batch_size=-4", *out], 2, "batch_size=-4"),
        ("sketch_depth 0", ["train", *BASE, "sketch_depth=0", *out], 2, "sketch_depth=0"),
        ("sketch_width 0", ["train", *BASE, "sketch_width=0", *out], 2, "sketch_width=0"),
        ("sketch_delta 0.5", ["train", *BASE, "sketch_delta=0.5", *out], 2,
         "sketch_delta=0.5: must be a failure probability in (0, 0.5)"),
        ("unknown sketch_correction", ["train", *BASE, "sketch_correction=exact", *out], 2,
         "sketch_correction='exact': Input should be 'delta' or 'paper'"),
        ("tau 0", ["train", *BASE, "strategy=fedavg", "tau=0", *out], 2, "tau=0"),
        ("lr 0", ["train", *BASE, "lr=0", *out], 2, "lr=0"),
        ("theta=auto for a baseline", ["train", *BASE, "strategy=fedavg", "theta=auto", *out], 2,
         "theta=auto applies to strategy=fda only"),
        ("not KEY=VALUE", ["train", *BASE, "theta", *out], 2, "expected KEY=VALUE, got 'theta'"),
        ("unknown model", ["train", *BASE, "model=resnet9", *out], 2, "model='resnet9'"),
        ("unknown dataset", ["train", *BASE, "dataset=imagenet", *out], 2, "dataset='imagenet'"),
        ("more workers than samples", ["train", *BASE, "workers_per_rank=2049", *out], 2,
         "cannot partition 4096 samples among 4098 workers"),
        ("missing dataset", ["train", *BASE, "dataset=cifar10", f"data_dir={empty}", *out], 2,
         "dataset 'cifar10' not found"),
        ("truncated dataset file", ["train", *BASE, "dataset=fashion-mnist", f"data_dir={trunc}", *out], 2,
         "truncated idx file"),
        ("bad YAML file", ["train", "--config", str(bad_yaml), *out], 2, "not valid YAML"),
        ("missing config file", ["train", "--config", str(tmp / "nope.yaml"), *out], 2, "config file not found"),
        ("setting twice in a YAML file", ["train", "--config", str(twice), *out], 2, "'batch_size' is given twice"),
        ("out dir holds a run", ["train", *BASE, "--out", str(run)], 2, "already holds a run; pass --resume"),
        ("resume with a different config", ["train", "--resume", str(run), "lr=0.5"], 2,
         "has a different configuration (lr: 0.001 -> 0.5)"),
        ("resume of a run without checkpoints", ["train", "--resume", str(plain)], 2, "no checkpoint in"),
        ("resume of a directory without a run", ["train", "--resume", str(empty)], 2, "holds no run"),
        ("device=cuda without CUDA", ["train", *BASE, "device=cuda", *out], 2, "torch sees no CUDA device"),
        # quoted: YAML reads a bare `true` as a boolean, which the setting does not accept (see report)
        ("gpu_aware_mpi=true without CUDA-aware MPI", ["train", *BASE, "gpu_aware_mpi=true", *out], 2,
         "this MPI library does not report CUDA support"),
    ]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("validation")
    cases = _cases(tmp)
    (tmp / "cases.json").write_text(json.dumps([{"id": c[0], "argv": c[1]} for c in cases]))
    (tmp / "driver.py").write_text(DRIVER)
    p = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, str(tmp / "driver.py"), str(tmp / "cases.json"),
                        str(tmp)], capture_output=True, text=True, timeout=600, cwd=REPO, env=ENV)
    assert p.returncode == 0, f"the driver job failed:\n{p.stderr[-4000:]}"
    ranks = [json.loads((tmp / f"rank{r}.json").read_text()) for r in (0, 1)]
    return {c[0]: (c, [ranks[0][i], ranks[1][i]]) for i, c in enumerate(cases)}


def _ids() -> list[str]:
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        return [c[0] for c in _cases(Path(d))]


@pytest.mark.parametrize("case_id", _ids())
def test_bad_input(outcomes, case_id):
    (_, argv, code, fragment), (r0, r1) = outcomes[case_id]
    for r in (r0, r1):
        assert r["rc"] == code, f"rank exit code {r['rc']} != {code}:\n{r['stderr'][-2000:]}"
        assert "Traceback" not in r["stderr"], r["stderr"]
    if code == 0:
        return
    assert fragment in r0["stderr"], r0["stderr"]
    assert r0["stderr"].count("fda: error") == 1, r0["stderr"]  # printed once, by rank 0 only
    assert "error" not in r1["stderr"], r1["stderr"]


def test_at_least_fifteen_bad_inputs():
    assert len([i for i in _ids() if not i.startswith("setup")]) >= 15


@pytest.mark.parametrize("settings,fragment", [
    (["thetta=1"], "did you mean 'theta'?"),
    (["dataset=cifar10", "data_dir=/nonexistent-fda-data"], "dataset 'cifar10' not found"),
])
def test_real_process_exits_2_without_traceback(tmp_path, settings, fragment):
    p = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-m", "fda", "train", *BASE, *settings,
                        "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300, cwd=REPO,
                       env=ENV)
    assert p.returncode == 2, p.stderr
    assert fragment in p.stderr
    assert p.stderr.count("fda: error") == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "run" / "metrics.h5").exists()
