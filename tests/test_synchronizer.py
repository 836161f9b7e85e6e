"""fda.Synchronizer in one process: K = 4 workers hosted by one rank (a world of one), so the step
protocol is checked without mpiexec. The reference it is checked against is FDA written out in
plain torch: drifts from w0, the linear monitor's state and bound, the mean at a sync."""
import copy
import math

import pytest
import torch

import fda
from fda import preemption
from fda.collectives import CollectiveError

K = 4
SEED = 2024


@pytest.fixture(scope="module")
def ctx():
    context = fda.init(seed=0, threads=1, workers_per_rank=K, abort_on_error=False)
    assert context.workers == K, "these tests need a world of one rank (run them without mpiexec)"
    yield context
    context.fda_comm.stop_watching()


def _models(seed=SEED):
    torch.manual_seed(seed)
    return [torch.nn.Linear(6, 3) for _ in range(K)]


def _local_steps(models, gen, scale=0.05):
    """What K optimizers would do: a different seeded move per worker."""
    with torch.no_grad():
        for m in models:
            for p in m.parameters():
                p.add_(scale * torch.randn(p.shape, generator=gen))


def _flat(m):
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()])


class TorchFDA:
    """FDA with the linear monitor, written out: the reference the Synchronizer must agree with."""

    def __init__(self, models, theta, xi):
        self.theta, self.w0, self.xi = theta, _flat(models[0]).clone(), xi.clone()

    def step(self, models):
        u = torch.stack([_flat(m) - self.w0 for m in models]).double()
        sq, dot = (u ** 2).sum(1).mean(), (u @ self.xi.double()).mean()
        bound = float(sq - dot ** 2)
        synced = bound > self.theta
        if synced:
            mean = torch.stack([_flat(m) for m in models]).sum(0) / K
            update = mean - self.w0
            self.xi, self.w0 = update / update.norm(), mean
        return synced, bound


def test_the_step_protocol_is_fda(ctx):
    gen = torch.Generator().manual_seed(SEED)
    models = _models()
    sync = fda.Synchronizer(models, ctx, strategy="fda", monitor="linear", theta=0.1, workers_per_rank=K)
    ref = TorchFDA(models, 0.1, sync.reference.xi)
    decisions = []
    for step in range(1, 13):
        _local_steps(models, gen)
        expected_sync, expected_bound = ref.step(models)
        synced = sync.step([0.1 * step] * K)
        decisions.append(synced)
        assert synced == expected_sync, f"step {step} (seed {SEED})"
        assert sync.last_bound == pytest.approx(expected_bound, rel=1e-6, abs=1e-12), f"step {step} (seed {SEED})"
        assert sync.mean_loss == pytest.approx(0.1 * step)
        if synced:
            assert torch.allclose(sync.w0, ref.w0, atol=1e-6)
            assert all(torch.equal(_flat(m), _flat(models[0])) for m in models)  # every worker holds the mean
    assert 0 < sum(decisions) < len(decisions), f"the test should see syncs and skipped syncs (seed {SEED})"
    assert sync.syncs == sum(decisions) and sync.step_count == 12
    sync.close()


@pytest.mark.parametrize("strategy, monitor, check_every, floats_sent", [
    ("fedavg", "naive", 1, 0),                # a schedule: nothing between syncs
    ("fda", "naive", 1, 6 * (3 + 1)),         # every step: the head and one state value, in ONE Allreduce
    ("kamp", "naive", 1, 6 * (3 + 1 + 1)),    # ... and Kamp's MAX of the state: a second Allreduce
    ("fda", "naive", 3, 2 * (3 + 1)),         # steps 3 and 6 only: the steps between make no collective
])
def test_what_each_step_sends(ctx, strategy, monitor, check_every, floats_sent):
    sync = fda.Synchronizer(_models(), ctx, strategy=strategy, monitor=monitor, theta=1e9, tau=1000,
                            check_every=check_every, workers_per_rank=K)
    for _ in range(6):
        sync.step(0.5)
    # allreduce_to_host counts 2 x bytes x ranks (one rank here), float64 values
    assert sync.mpi_bytes("state") == 2 * 8 * floats_sent
    assert sync.syncs == 0 and sync.mpi_bytes("sync") == 0
    sync.close()


def test_a_stop_request_is_seen_after_the_step(ctx, monkeypatch):
    sync = fda.Synchronizer(_models(), ctx, strategy="synchronous", workers_per_rank=K)
    sync.step(0.0)
    assert not sync.stop_requested
    monkeypatch.setattr(preemption, "requested", lambda: True)
    sync.step(0.0)
    assert sync.stop_requested
    sync.close()


def test_a_non_finite_loss_stops_the_run_at_its_step(ctx):
    sync = fda.Synchronizer(_models(), ctx, strategy="fda", monitor="sketch", theta=1.0, workers_per_rank=K)
    sync.step([1.0] * K)
    with pytest.raises(CollectiveError, match="at step 2"):
        sync.step([1.0, math.nan, 1.0, 1.0])
    sync.close()


@pytest.mark.parametrize("settings", [
    {"strategy": "fda", "monitor": "linear", "theta": 0.01},
    {"strategy": "fda_opt", "monitor": "sketch", "max_epochs": 2},
    {"strategy": "fda", "monitor": "sketch", "theta": 0.01, "sync_compression": "int16"},
    {"strategy": "fedavg", "tau": 3, "sync_delay": 2, "sync_compression": "int8"},  # in flight at the save
    {"strategy": "fda", "monitor": "linear", "theta": 0.01, "sync_delay": 1, "server_optimizer": "nesterov"},
])
def test_a_resumed_synchronizer_continues_bit_for_bit(ctx, settings):
    def run(models, sync, steps, gen):
        out = []
        for _ in range(steps):
            _local_steps(models, gen)
            out.append((sync.step(0.1), sync.last_bound))
        return out

    common = dict(workers_per_rank=K, steps_per_epoch=2, **settings)
    straight_models = _models()
    straight = fda.Synchronizer(straight_models, ctx, **common)
    expected = run(straight_models, straight, 8, torch.Generator().manual_seed(SEED))

    first_models = _models()
    first = fda.Synchronizer(first_models, ctx, **common)
    gen = torch.Generator().manual_seed(SEED)
    got = run(first_models, first, 4, gen)
    saved = copy.deepcopy(first.state_dict())
    workers = [copy.deepcopy(first.worker_state_dict(j)) for j in range(K)]
    weights = [copy.deepcopy(m.state_dict()) for m in first_models]

    resumed_models = _models(seed=SEED + 1)  # other weights: the checkpoint must bring them back
    resumed = fda.Synchronizer(resumed_models, ctx, **common)
    for j, (m, w) in enumerate(zip(resumed_models, weights)):
        m.load_state_dict(w)
        resumed.load_worker_state_dict(j, workers[j])
    resumed.load_state_dict(saved)
    got += run(resumed_models, resumed, 4, gen)
    assert got == expected, f"seed {SEED}"
    assert all(torch.equal(_flat(a), _flat(b)) for a, b in zip(straight_models, resumed_models))
    assert resumed.comm_bytes == straight.comm_bytes and resumed.syncs == straight.syncs
    for s in (straight, first, resumed):
        s.close()


@pytest.mark.parametrize("delay", [1, 2])
def test_an_overlapped_sync_lands_later_with_each_workers_progress_since_its_start(ctx, delay):
    gen = torch.Generator().manual_seed(SEED)
    models = _models()
    sync = fda.Synchronizer(models, ctx, strategy="fedavg", tau=4, sync_delay=delay, workers_per_rank=K)
    started = {}
    for step in range(1, 14):
        _local_steps(models, gen)
        before = [_flat(m).clone() for m in models]
        assert sync.step(0.1) == (step % 4 == 0), f"step {step}"
        if step % 4 == 0:
            started = {"mean": torch.stack(before).sum(0) / K, "snapshots": before}
            assert all(torch.equal(_flat(m), b) for m, b in zip(models, before)), "the start changed a model"
        elif step > 4 and step % 4 == delay:
            for m, b, s in zip(models, before, started["snapshots"]):
                assert torch.allclose(_flat(m), started["mean"] + (b - s), atol=1e-6), f"step {step} (seed {SEED})"
        else:
            assert all(torch.equal(_flat(m), b) for m, b in zip(models, before)), f"step {step}"
        assert sync.sync_in_flight == (step >= 4 and (step % 4 == 0 or step % 4 < delay)), f"step {step}"
    summary = sync.close()
    landed = sum(t + delay <= 13 for t in (4, 8, 12))  # with delay 2, the sync of step 12 has not landed
    assert sync.syncs == 3 and summary["syncs_landed"] == landed


def test_no_check_starts_while_a_sync_is_in_flight(ctx):
    sync = fda.Synchronizer(_models(), ctx, strategy="fda", monitor="naive", theta=0.0, sync_delay=3,
                            workers_per_rank=K)
    for _ in range(8):  # theta 0: a sync at every check; checks at 1 and 5 (after the landings at 4 and 8)
        sync.step(0.5)
    assert sync.syncs == 2 and sync.mpi_bytes("state") == 2 * 8 * 2 * (3 + 1)
    sync.close()


def test_sync_delay_is_refused_where_a_sync_could_not_land_before_the_next(ctx):
    with pytest.raises(fda.ConfigError, match="sync_delay=4 must be below tau=4"):
        fda.Synchronizer(_models(), ctx, strategy="fedavg", tau=4, sync_delay=4, workers_per_rank=K)
    with pytest.raises(fda.ConfigError, match="strategy=synchronous syncs at every step"):
        fda.Synchronizer(_models(), ctx, strategy="synchronous", sync_delay=1, workers_per_rank=K)
    with pytest.raises(fda.ConfigError, match=r"below the sync period \(2 steps\)"):
        fda.Synchronizer(_models(), ctx, strategy="fedopt", steps_per_epoch=2, sync_delay=2, workers_per_rank=K)
    with pytest.raises(fda.ConfigError, match=r"below the sync period \(3 steps\)"):
        fda.Synchronizer(_models(), ctx, strategy="fda_opt", steps_per_epoch=3, sync_delay=5, workers_per_rank=K)


def test_the_internals_are_read_only_views(ctx):
    sync = fda.Synchronizer(_models(), ctx, strategy="fda", monitor="linear", theta=1.0, workers_per_rank=K)
    assert sync.w0 is sync.reference.params and sync.xi is sync.reference.xi and sync.ref is sync.reference.flat
    assert isinstance(sync.workers, tuple) and len(sync.workers) == K
    assert sync.worker_params(1).data_ptr() == next(sync.workers[1].module.parameters()).data_ptr()
    for name in ("w0", "xi", "ref", "workers", "log", "comm_bytes", "reference"):
        with pytest.raises(AttributeError):
            setattr(sync, name, None)
    assert sync.log is None
    sync.flush_log(durable=True)  # no log: nothing to do
    sync.close()
    plain = fda.Synchronizer(_models(), ctx, strategy="fedavg", tau=2, workers_per_rank=K)
    assert plain.reference is None and plain.ref is None and plain.w0 is None
    plain.close()


@pytest.mark.parametrize("settings, rule", [
    ({"strategy": "fda", "theta": 0.5}, "given"),
    ({"strategy": "fda", "theta": "auto", "theta_profile": "hpc"}, "auto: hpc rule 2.7e-05 x d = 2.7e-05 x 21 = 0.000567"),
    ({"strategy": "kamp", "theta": 0.5}, "given"),
    ({"strategy": "fda_opt"}, "per round: ((max_epochs/2)/E_r) * Var_r"),
    ({"strategy": "fedavg"}, "none (no variance check)"),
])
def test_the_strategy_says_how_theta_was_chosen(ctx, settings, rule):
    sync = fda.Synchronizer(_models(), ctx, workers_per_rank=K, steps_per_epoch=3, **settings)
    assert sync.theta_rule() == rule
    sync.close()


def test_the_epoch_is_local_epochs_done(ctx):
    sync = fda.Synchronizer(_models(), ctx, strategy="synchronous", workers_per_rank=K, steps_per_epoch=4)
    for _ in range(6):
        sync.step()
    assert sync.epoch == 1.5
    sync.close()
    assert math.isnan(fda.Synchronizer(_models(), ctx, strategy="synchronous", workers_per_rank=K).epoch)


def test_the_log_records_whether_the_allreduce_adds_in_pairwise_order(ctx, tmp_path):
    import h5py

    sync = fda.Synchronizer(_models(), ctx, strategy="synchronous", workers_per_rank=K, log=tmp_path)
    sync.step(0.0)
    sync.close()
    with h5py.File(tmp_path / "metrics.h5") as f:
        assert bool(f.attrs["allreduce_pairwise_order"]) is True
        assert "any order gives the same bits" in str(f.attrs["allreduce_order_detail"])
