"""fda.checkpoint: per-worker files, loaded to the CPU, any layout of the same K (in-process, one rank;
the resume chains over 4x1 -> 2x2 -> 1x4 are in test_preemption.py)."""
import json

import pytest
import torch

from fda import Synchronizer, checkpoint
from fda.config import ConfigError
from fda.data import ShardLoader


def _worker(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)  # the same data for every worker built here
    x, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
    loader = ShardLoader(x, y, torch.arange(64), 8, seed=0, worker=0)
    return model, opt, loader


def _train(model, opt, loader, sync, steps):
    for _ in range(steps):
        xb, yb = loader.next_batch()
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync.step(loss.item())


def test_resume_loads_to_the_cpu_and_keeps_adams_step_counters_there(mpi_ctx, tmp_path, monkeypatch):
    model, opt, loader = _worker()
    sync = Synchronizer(model, mpi_ctx, strategy="fedavg", tau=3, optimizer=opt)
    _train(model, opt, loader, sync, 5)
    checkpoint.save(tmp_path, mpi_ctx, sync, [model], [opt], [loader])
    assert {p.name for p in (tmp_path / "checkpoints" / "step_5").iterdir()} == {
        "worker_0.pt", "sync.pt", "rng_rank_0.pt", "meta.json"}

    locations = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: locations.append(k.get("map_location")) or real_load(*a, **k))
    fresh, fresh_opt, fresh_loader = _worker(seed=1)
    fresh_sync = Synchronizer(fresh, mpi_ctx, strategy="fedavg", tau=3, optimizer=fresh_opt)
    ckpt = checkpoint.find_latest(tmp_path, mpi_ctx)
    checkpoint.restore(ckpt, fresh_sync, [fresh], [fresh_opt], [fresh_loader])
    # with map_location=<the GPU>, Adam's step counters would land there and every step would sync
    # the device once per parameter; loaded to the CPU, torch's load_state_dict moves only the moments
    assert locations and set(locations) == {"cpu"}
    for p in fresh.parameters():
        state = fresh_opt.state[p]
        assert state["step"].device.type == "cpu"
        assert state["exp_avg"].device == p.device and state["exp_avg_sq"].device == p.device
    assert fresh_sync.step_count == 5 and fresh_loader.state_dict() == loader.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    # both continue identically
    _train(model, opt, loader, sync, 3)
    _train(fresh, fresh_opt, fresh_loader, fresh_sync, 3)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))


def test_a_different_k_is_an_error_naming_both(mpi_ctx, tmp_path):
    where = tmp_path / "checkpoints" / "step_40"
    where.mkdir(parents=True)
    (where / "meta.json").write_text(json.dumps({"format": 2, "step": 40, "workers": 8, "world_size": 4,
                                                 "workers_per_rank": 2}))
    (tmp_path / "checkpoints" / "LATEST").write_text("40")
    with pytest.raises(ConfigError) as e:
        checkpoint.find_latest(tmp_path, mpi_ctx)
    assert "K=8 workers (4 ranks x 2 per rank)" in str(e.value)
    assert f"this job has K={mpi_ctx.workers} ({mpi_ctx.world_size} ranks x 1 per rank)" in str(e.value)
    assert "ranks x workers_per_rank = 8" in str(e.value)


def test_an_old_per_rank_checkpoint_is_named(tmp_path):
    where = tmp_path / "checkpoints" / "step_3"
    where.mkdir(parents=True)
    (where / "rank_0.pt").write_bytes(b"")
    (tmp_path / "checkpoints" / "LATEST").write_text("3")
    with pytest.raises(ConfigError, match="per-rank format of an older fda"):
        checkpoint.saved_layout(tmp_path)
