"""The library API (issue 7): fda.init, fda.Synchronizer, fda.shard, and the example that uses them.

Ordinary tests (plain `pytest`) run the example under mpiexec and compare errors with the CLI's.
The MPI tests run in-process on every rank:
    mpiexec -n 2 python -m mpi4py -m pytest --with-mpi -m mpi tests/test_api.py
Rank-dependent checks are gathered first and asserted on every rank, so a failure on one rank
fails the test everywhere instead of leaving the others waiting in a collective.
"""
import copy
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fda
from fda import cli
from fda.config import ConfigError, make_config
from fda.h5log import open_log

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "own_loop.py"
from conftest import MPIEXEC, child_env  # noqa: E402
EXAMPLE_SAMPLES, EXAMPLE_BATCH = 8192, 32  # what examples/own_loop.py trains on


# ----------------------------------------------------------------------------- the example
@pytest.mark.parametrize("ranks", [2, 3])
def test_example_runs_as_written(ranks, tmp_path):
    r = subprocess.run([str(MPIEXEC), "-n", str(ranks), sys.executable, str(EXAMPLE)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300, env=child_env())
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    finals = [line for line in r.stdout.splitlines() if line.startswith("own_loop:")]
    assert len(finals) == 1, r.stdout  # rank 0 only
    m = re.match(r"own_loop: K=(\d+) steps=(\d+) syncs=(\d+) test_acc=([0-9.]+) ", finals[0])
    assert m, finals[0]
    k, steps, syncs, acc = int(m[1]), int(m[2]), int(m[3]), float(m[4])
    expected_steps = math.ceil(EXAMPLE_SAMPLES / (ranks * EXAMPLE_BATCH))  # one epoch of fda.shard
    assert (k, steps) == (ranks, expected_steps)
    assert syncs <= steps // 10, (syncs, steps)  # FDA: far fewer syncs than steps
    assert acc > 0.5  # 4 classes: chance is 0.25

    with open_log(tmp_path / "runs" / "mine") as f:
        assert f.attrs["status"] == "completed"
        assert int(f.attrs["workers"]) == ranks
        np.testing.assert_array_equal(f["steps/step"][()], np.arange(1, expected_steps + 1))
        assert int(f["steps/synced"][()].sum()) == syncs
        assert np.all(np.isfinite(f["steps/loss"][()]))
        assert np.all(np.isfinite(f["steps/var_bound"][()]))  # sketch monitor checks every step
        # should_evaluate() without eval_every/steps_per_epoch: once per pass over the fda.shard
        np.testing.assert_array_equal(f["evals/step"][()], [expected_steps])
        assert f["evals/test_acc"][0] == pytest.approx(acc, abs=1e-4)
        assert int(f.attrs["summary_steps"]) == expected_steps


# ------------------------------------------------------------ same errors as the CLI (no MPI)
@pytest.fixture(scope="module")
def solo_ctx():
    return fda.init(seed=0, threads=1, abort_on_error=False)


BAD_SETTINGS = [("theta", "-1", -1), ("strategy", "bogus", "bogus"), ("thetaa", "1", 1),
                ("sketch_width", "0", 0), ("sync_optimizer_state", "sometimes", "sometimes")]


@pytest.mark.parametrize("name, cli_value, api_value", BAD_SETTINGS)
def test_bad_settings_raise_the_cli_errors(name, cli_value, api_value, solo_ctx, tmp_path, capsys):
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ConfigError) as api_error:
        fda.Synchronizer(model, solo_ctx, **{name: api_value})
    rc = cli.main(["train", "--no-progress", "--out", str(tmp_path / "run"), f"{name}={cli_value}"])
    assert rc == 2
    assert capsys.readouterr().err.strip() == f"fda: error: {api_error.value}"
    assert not (tmp_path / "run").exists()


def test_theta_minus_one_same_message_as_fda_train(solo_ctx, tmp_path):
    with pytest.raises(ConfigError) as api_error:
        fda.Synchronizer(torch.nn.Linear(3, 2), solo_ctx, strategy="fda", theta=-1)
    r = subprocess.run([str(Path(sys.executable).parent / "fda"), "train", "theta=-1", "--no-progress",
                        "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120,
                       env=child_env())
    assert r.returncode == 2
    assert r.stderr.strip() == f"fda: error: {api_error.value}"
    assert "theta=-1" in str(api_error.value)


def test_settings_are_the_cli_config(solo_ctx):
    model = torch.nn.Linear(3, 2)
    sync = fda.Synchronizer(model, solo_ctx, strategy="fda", monitor="linear", theta=0.25, check_every=3)
    assert sync.cfg == make_config(overrides=["strategy=fda", "monitor=linear", "theta=0.25", "check_every=3"])
    sync.close()


def test_sketch_hashes_are_fresh_at_every_check(solo_ctx, monkeypatch):
    """The kernel gets the seed of (seed, step) at each check: every rank derives the same one."""
    from fda.monitor.sketch import check_seed
    seeds, real = [], fda.kernels.drift_state_out

    def spy(*args, **kw):
        seeds.append(kw.get("seed"))
        return real(*args, **kw)

    monkeypatch.setattr(fda.kernels, "drift_state_out", spy)
    model = torch.nn.Linear(3, 2)
    sync = fda.Synchronizer(model, solo_ctx, strategy="fda", monitor="sketch", theta=1e9, seed=5, check_every=2)
    for _ in range(6):
        with torch.no_grad():
            model.weight.add_(0.01)
        sync.step()
    sync.close()
    assert seeds == [check_seed(5, step) for step in (2, 4, 6)]


def test_shard_iteration_semantics(solo_ctx):
    from fda.context import steps_per_epoch
    n, bs = 103, 8
    ds = torch.utils.data.TensorDataset(torch.arange(n).float().unsqueeze(1), torch.arange(n))
    loader = fda.shard(ds, solo_ctx, batch_size=bs)
    # an epoch is fda train's: ceil(N / (K b)) steps (13 here, while a pass over the shard is 12 batches)
    assert len(loader) == steps_per_epoch(n, 1, bs) == math.ceil(n / bs) == solo_ctx.shard_batches
    first = [y.tolist() for _, y in loader]
    second = [y.tolist() for _, y in loader]
    assert len(first) == len(second) == len(loader)
    assert all(len(b) == bs for b in first)
    flat1, flat2 = sum(first, []), sum(second, [])
    one_pass = flat1[:(n // bs) * bs]
    assert len(set(one_pass)) == len(one_pass)  # no repeats within a pass over the shard
    assert sorted(flat1) != flat1 and flat1 != flat2  # shuffled, and differently each epoch
    for x, y in fda.shard(ds, solo_ctx, batch_size=bs, shuffle=False):
        assert torch.equal(x[:, 0].long(), y)  # features and labels stay aligned
    # any map-style dataset (not only TensorDataset) goes through default_collate
    pairs = [(torch.tensor([float(i)]), i) for i in range(n)]
    batches = list(fda.shard(pairs, solo_ctx, batch_size=bs, shuffle=False))
    assert len(batches) == len(loader) and torch.equal(batches[0][0][:, 0].long(), batches[0][1])
    with pytest.raises(ValueError, match="fewer than one batch"):
        fda.shard(ds, solo_ctx, batch_size=200)


# ------------------------------------------------------------------------- in-process MPI
@pytest.fixture(scope="module")
def ctx():
    context = fda.init(seed=0, threads=1, abort_on_error=False)
    yield context
    context.fda_comm.stop_watching()


def everywhere(ctx, ok: bool) -> bool:
    """True when `ok` holds on every rank (each rank learns the same answer)."""
    return all(ctx.mpi_comm.allgather(bool(ok)))


def gathered(ctx, t: torch.Tensor) -> list[torch.Tensor]:
    return [torch.as_tensor(a) for a in ctx.mpi_comm.allgather(t.detach().clone().numpy())]


def rank_batch(ctx, n=16, features=6, classes=3, salt=0):
    g = torch.Generator().manual_seed(1000 * salt + ctx.rank)
    return torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g)


class Mixed(torch.nn.Module):
    """A frozen float64 layer, a BatchNorm (float32 stats + int64 counter), a float64 buffer."""

    def __init__(self):
        super().__init__()
        self.frozen = torch.nn.Linear(6, 8).double().requires_grad_(False)
        self.fc = torch.nn.Linear(8, 16)
        self.bn = torch.nn.BatchNorm1d(16)
        self.head = torch.nn.Linear(16, 3)
        self.register_buffer("scale64", torch.ones(1, dtype=torch.float64))

    def forward(self, x):
        h = self.frozen(x.double()).float()
        return self.head(torch.relu(self.bn(self.fc(h)))) * self.scale64.float()


def train_step(model, opt, x, y) -> float:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


@pytest.mark.mpi(min_size=2)
def test_frozen_batchnorm_and_dtypes_handled_as_documented(ctx):
    torch.manual_seed(100 + ctx.rank)  # a different initial model on every rank
    model = Mixed()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sync = fda.Synchronizer(model, ctx, strategy="synchronous")
    # rank 0's whole state (frozen layer and int counters included) is everyone's starting point
    start = model.state_dict()
    assert everywhere(ctx, all(torch.equal(t, gathered(ctx, t)[0]) for t in start.values()))
    assert sync.d == sum(p.numel() for p in model.parameters() if p.requires_grad)

    with torch.no_grad():
        model.frozen.weight.add_(ctx.rank + 1)
        model.scale64.fill_(ctx.rank + 1)
    for i in range(ctx.rank + 1):  # ranks see different data and a different number of BN updates
        model(rank_batch(ctx, salt=10 + i)[0])
    loss = train_step(model, opt, *rank_batch(ctx))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen_before = model.frozen.weight.detach().clone()

    assert sync.step(loss=loss) is True
    after = model.state_dict()
    averaged = ["fc.weight", "fc.bias", "head.weight", "head.bias", "bn.weight", "bn.bias",
                "bn.running_mean", "bn.running_var", "scale64"]
    checks = {}
    for name in averaged:
        mean = torch.stack(gathered(ctx, before[name])).mean(0)
        checks[name] = (torch.allclose(after[name], mean, rtol=1e-6, atol=1e-7)
                        and all(torch.equal(a, after[name]) for a in gathered(ctx, after[name])))
    checks["frozen untouched"] = torch.equal(model.frozen.weight, frozen_before)
    checks["frozen stays per rank"] = not torch.equal(*gathered(ctx, model.frozen.weight)[:2])
    checks["counter local"] = int(after["bn.num_batches_tracked"]) == ctx.rank + 2
    checks["bn stats differed"] = not torch.equal(*gathered(ctx, before["bn.running_mean"])[:2])
    bad = [k for k, ok in checks.items() if not everywhere(ctx, ok)]
    assert not bad
    assert model.scale64.item() == pytest.approx(sum(range(1, ctx.world_size + 1)) / ctx.world_size)
    sync.close()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_trainable_non_float32_parameter_is_rejected(ctx, dtype):
    model = Mixed()
    model.head.to(dtype)
    with pytest.raises(ValueError, match=rf"trainable parameter 'head.weight' is {dtype}.*float32"):
        fda.Synchronizer(model, ctx)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("monitor", ["sketch", "linear", "naive"])
def test_step_returns_whether_it_synced(ctx, monitor):
    torch.manual_seed(0)
    model = Mixed()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sync = fda.Synchronizer(model, ctx, strategy="fda", monitor=monitor, theta=0)
    flags = []
    for i in range(4):
        flags.append(sync.step(loss=train_step(model, opt, *rank_batch(ctx, salt=i))))
        w = torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])
        assert everywhere(ctx, all(torch.equal(g, w) for g in gathered(ctx, w)))
    assert flags == [True] * 4 and all(type(f) is bool for f in flags)
    assert sync.syncs == 4
    sync.close()

    never = fda.Synchronizer(model, ctx, strategy="fda", monitor=monitor, theta=1e12)
    flags = [never.step(loss=train_step(model, opt, *rank_batch(ctx, salt=9 + i))) for i in range(3)]
    assert flags == [False] * 3 and never.syncs == 0
    never.close()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("compression", ["none", "int8"])
def test_an_overlapped_sync_lands_the_same_global_model_on_every_rank(ctx, compression):
    torch.manual_seed(0)
    model = Mixed()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    # theta 0: a sync at every check, so at steps 1, 5 and 9 (a check starts the step after a landing)
    sync = fda.Synchronizer(model, ctx, strategy="fda", monitor="linear", theta=0, sync_delay=3,
                            sync_compression=compression)
    trainable = [p for p in model.parameters() if p.requires_grad]
    flat = lambda: torch.cat([p.detach().reshape(-1) for p in trainable])  # noqa: E731
    for i in range(1, 12):
        loss = train_step(model, opt, *rank_batch(ctx, salt=i))
        before = flat()
        assert sync.step(loss=loss) == (i % 4 == 1)
        if i % 4 == 1:
            at_start = before
        if i in (4, 8):  # the sync of step i - 3 lands: G + this rank's progress since step 5
            G = sync.reference.params.clone()
            assert everywhere(ctx, all(torch.equal(g, G) for g in gathered(ctx, G)))
            assert everywhere(ctx, torch.equal(flat(), G + (before - at_start)))
            mean = torch.stack(gathered(ctx, at_start)).mean(0)
            tol = 1e-6 if compression == "none" else 0.05 * float(mean.abs().max())
            assert everywhere(ctx, torch.allclose(G, mean, atol=tol))
        else:
            assert everywhere(ctx, torch.equal(flat(), before))
    assert sync.sync_in_flight  # the sync of step 9 lands at step 12
    sync.close()


@pytest.mark.mpi(min_size=2)
def test_averaged_model_leaves_local_models_alone(ctx):
    torch.manual_seed(0)
    model = Mixed()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sync = fda.Synchronizer(model, ctx, strategy="fda", theta=1e12)
    for round_ in range(2):
        for i in range(3):
            assert not sync.step(loss=train_step(model, opt, *rank_batch(ctx, salt=10 * round_ + i)))
        with torch.no_grad():  # outside the flat buffer; the same on every rank
            model.frozen.bias.fill_(0.5 + round_)
            model.scale64.fill_(2.0 + round_)
        local = copy.deepcopy(model.state_dict())
        avg = sync.averaged_model()
        assert avg is not model
        assert torch.equal(avg.frozen.bias, model.frozen.bias) and avg.scale64.item() == 2.0 + round_
        same_local = all(torch.equal(local[k], v) for k, v in model.state_dict().items())
        avg_state = avg.state_dict()
        mean_ok = all(
            torch.allclose(avg_state[k], torch.stack(gathered(ctx, local[k])).mean(0), rtol=1e-6, atol=1e-7)
            for k in ("fc.weight", "head.bias", "bn.running_mean", "bn.running_var"))
        ranks_differ = not torch.equal(*gathered(ctx, local["fc.weight"])[:2])
        with torch.no_grad():
            for p in avg.parameters():
                p.add_(1.0)  # changing the averaged copy must not reach the training model
        still_local = all(torch.equal(local[k], v) for k, v in model.state_dict().items())
        assert everywhere(ctx, same_local and mean_ok and ranks_differ and still_local)
    sync.close()


def _run_phase(model, opt, sync, ctx, steps, salt):
    out = []
    for i in range(steps):
        out.append(sync.step(loss=train_step(model, opt, *rank_batch(ctx, salt=salt + i))))
    return out


def _state_equal(a: dict, b: dict) -> bool:
    for k in a:
        if k == "totals":
            continue
        x, y = a[k], b[k]
        if torch.is_tensor(x):
            if not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return set(a) == set(b)


@pytest.mark.mpi(min_size=2)
def test_state_dict_round_trip(ctx):
    settings = dict(strategy="fda", monitor="linear", theta=0.004)
    torch.manual_seed(0)
    model_a = Mixed()
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.05)  # stateless: the models are the whole state
    sync_a = fda.Synchronizer(model_a, ctx, **settings)
    first = _run_phase(model_a, opt_a, sync_a, ctx, 8, salt=0)
    assert any(first), "the test wants at least one sync before the checkpoint"
    saved = sync_a.state_dict()

    ctx_b = fda.init(seed=0, threads=1, abort_on_error=False)  # its own byte counters
    model_b = Mixed()
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.05)
    sync_b = fda.Synchronizer(model_b, ctx_b, **settings)
    model_b.load_state_dict(model_a.state_dict())
    sync_b.load_state_dict(saved)
    assert _state_equal(sync_b.state_dict(), saved)
    assert sync_b.step_count == 8 and sync_b.syncs == sum(first)

    then_a = _run_phase(model_a, opt_a, sync_a, ctx, 8, salt=100)
    then_b = _run_phase(model_b, opt_b, sync_b, ctx_b, 8, salt=100)
    assert then_a == then_b
    assert _state_equal(sync_a.state_dict(), sync_b.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(model_a.parameters(), model_b.parameters()))

    other = fda.Synchronizer(Mixed(), ctx_b, strategy="fda", monitor="linear", theta=0.5)
    with pytest.raises(ConfigError, match="different configuration"):
        other.load_state_dict(saved)
    for s in (sync_a, sync_b, other):
        s.close()
    ctx_b.fda_comm.stop_watching()


# ------------------------------------------------- `fda train` and a hand-written loop agree
CLI_RUNS = {
    "fda-sketch-average": ["strategy=fda", "theta=1.0", "sync_optimizer_state=average"],
    "fda-linear-reset": ["strategy=fda", "monitor=linear", "theta=0.5", "sync_optimizer_state=reset",
                         "optimizer=sgd", "lr=0.05", "momentum=0.9"],
}
COMMON = ["dataset=synthetic", "model=mlp", "max_steps=30", "eval_every=10", "threads=1"]


def api_loop(cfg, out, ctx):
    """What a user would write with the public API, for the same model, data and settings."""
    from fda.context import steps_per_epoch
    from fda.data import ShardLoader, load_dataset, partition
    from fda.models import build_model
    from fda.train import evaluate

    data = load_dataset(cfg.dataset, cfg.data_dir, seed=cfg.seed)
    parts = partition(data.y_train, ctx.workers, cfg.partition, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes).to(ctx.device)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loader = ShardLoader(data.x_train, data.y_train, parts[ctx.rank], cfg.batch_size, seed=cfg.seed,
                         worker=ctx.rank)
    sync = fda.Synchronizer(model, ctx, config=cfg, optimizer=opt, log=out,
                            steps_per_epoch=steps_per_epoch(data.num_train, ctx.workers, cfg.batch_size))
    for step in range(1, cfg.max_steps + 1):
        x, y = loader.next_batch()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync.step(loss=loss.item())
        if sync.should_evaluate() or step == cfg.max_steps:
            sync.log_eval(*evaluate(sync.averaged_model(), data.x_test, data.y_test, ctx))
    return sync.close()


TIMING = {"time_compute", "time_monitor", "time_comm", "wall_time"}
SAME_ATTRS = ("config", "status", "world_size", "workers", "num_params", "strategy", "theta",
              "steps_per_epoch", "state_floats", "summary_steps", "summary_syncs", "summary_comm_gb",
              "summary_comm_bytes_mpi", "summary_final_test_acc")


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("run", list(CLI_RUNS))
def test_cli_and_api_write_identical_logs(run, shared_dir):
    from mpi4py import MPI

    args = COMMON + CLI_RUNS[run]
    assert cli.main(["train", "--no-progress", "--out", str(shared_dir / "cli"), *args]) == 0
    api_ctx = fda.init(seed=0, threads=1, abort_on_error=False)  # fresh byte counters, as the CLI's
    api_loop(make_config(overrides=args), shared_dir / "api", api_ctx)
    api_ctx.fda_comm.stop_watching()

    problems = None
    if MPI.COMM_WORLD.rank == 0:
        problems = []
        with open_log(shared_dir / "cli") as a, open_log(shared_dir / "api") as b:
            for group in ("steps", "evals"):
                for name in a[group]:
                    if name not in TIMING and not np.array_equal(a[group][name][()], b[group][name][()],
                                                                 equal_nan=True):
                        problems.append(f"{group}/{name}")
            for key in SAME_ATTRS:
                va, vb = a.attrs[key], b.attrs[key]
                same = (math.isnan(va) and math.isnan(vb)) if isinstance(va, float) and va != va else va == vb
                if not same:
                    problems.append(f"attr {key}: {va!r} != {vb!r}")
            rows = a["steps/step"].shape[0], a["evals/step"].shape[0], int(a["steps/synced"][()].sum())
        problems.append(rows)
    problems = MPI.COMM_WORLD.bcast(problems, root=0)
    *problems, (steps, evals, syncs) = problems
    assert not problems
    assert (steps, evals) == (30, 3)
    assert 0 < syncs < steps  # the comparison covers syncs (and the optimizer-state policy at them)
