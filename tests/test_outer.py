"""The outer update (fda.outer) against hand computations, and its state round trip."""
import pytest
import torch

from fda.outer import OuterOptimizer, make_outer


def hand_step(kind, w, g, t, st, lr, momentum=0.9):
    """One server step written out by hand; st holds the optimizer's running state."""
    if kind == "sgd":
        return w - lr * g
    if kind in ("sgdm", "nesterov"):
        st["v"] = g if t == 1 else momentum * st["v"] + g
        return w - lr * (st["v"] if kind == "sgdm" else g + momentum * st["v"])
    if kind == "adam":
        st["m"] = 0.9 * st.get("m", 0) + 0.1 * g
        st["s"] = 0.99 * st.get("s", 0) + 0.01 * g * g
        mhat, shat = st["m"] / (1 - 0.9 ** t), st["s"] / (1 - 0.99 ** t)
        return w - lr * mhat / (shat.sqrt() + 1e-3)
    st["acc"] = st.get("acc", 0) + g * g  # adagrad
    return w - lr * g / (st["acc"].sqrt() + 1e-3)


@pytest.mark.parametrize("kind", OuterOptimizer.KINDS)
def test_outer_optimizer_matches_hand_computation(kind):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(50, generator=gen, dtype=torch.float64).float()
    opt, state, hand = OuterOptimizer(kind, lr=0.3, momentum=0.9), {}, w.clone()
    for t in range(1, 4):
        noise = torch.randn(50, generator=gen) * 0.1
        mean = w + noise                      # the workers' average after a round
        hand = hand_step(kind, w, w - mean, t, state, lr=0.3)
        w = opt.step(w.clone(), mean.clone())
        torch.testing.assert_close(w, hand, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(w, mean)  # not plain averaging


def test_outer_sgd_lr_one_is_plain_averaging():
    w0, mean = torch.randn(10), torch.randn(10)
    torch.testing.assert_close(OuterOptimizer("sgd", lr=1.0).step(w0, mean.clone()), mean)


def test_outer_optimizer_state_round_trip():
    a = OuterOptimizer("adam", lr=0.1)
    w = a.step(torch.ones(4), torch.zeros(4))
    b = OuterOptimizer("adam", lr=0.1)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a.step(w.clone(), w * 0.5), b.step(w.clone(), w * 0.5))


def test_make_outer_none_is_plain_averaging_and_bad_kinds_are_refused():
    assert make_outer("none", lr=0.7) is None
    assert make_outer("nesterov", lr=0.7).describe() == "nesterov(lr=0.7, momentum=0.9)"
    with pytest.raises(ValueError, match="unknown outer optimizer"):
        OuterOptimizer("lamb", lr=0.1)


# ------------------------------------------------------- through fda.Synchronizer, on every rank
def _params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("settings", [
    dict(strategy="diloco", tau=3),  # DiLoCo's defaults: outer Nesterov, momentum 0.9, lr 0.7
    dict(strategy="fda", monitor="naive", theta=0.0, server_optimizer="nesterov", server_lr=0.7),
], ids=["diloco", "fda-triggered"])
def test_outer_nesterov_step_matches_hand_computation(mpi_ctx, settings):
    import fda

    ctx = mpi_ctx
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sync = fda.Synchronizer(model, ctx, **settings)
    assert "outer=nesterov(lr=0.7, momentum=0.9)" in sync.describe()
    w0, v, synced_at, ok = _params(model), None, [], True
    gen = torch.Generator().manual_seed(1 + ctx.rank)  # every rank its own data
    for step in range(1, 10):
        x, y = torch.randn(8, 4, generator=gen), torch.randint(0, 3, (8,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        every = torch.stack([torch.as_tensor(w) for w in ctx.mpi_comm.allgather(_params(model).numpy())])
        if sync.step(loss=loss.item()):
            synced_at.append(step)
            g = w0 - every.mean(0)                        # the pseudo-gradient
            v = g if v is None else 0.9 * v + g           # momentum buffer
            w0 = w0 - 0.7 * (g + 0.9 * v)                 # Nesterov: step along g + mu * v
            now = _params(model)
            ok &= torch.allclose(now, w0, rtol=1e-5, atol=1e-6)
            ok &= all(torch.equal(torch.as_tensor(w), now) for w in ctx.mpi_comm.allgather(now.numpy()))
            ok &= not torch.allclose(now, every.mean(0), atol=1e-4)  # not plain averaging
            w0 = now  # continue from the library's w0 (float32) so rounding does not accumulate
    sync.close()
    assert synced_at == ([3, 6, 9] if settings["strategy"] == "diloco" else list(range(1, 10)))
    assert all(ctx.mpi_comm.allgather(bool(ok)))


@pytest.mark.parametrize("given, optimizer, weight_decay", [
    ({}, "adamw", 0.1),                                       # DiLoCo's inner AdamW and its decoupled decay
    ({"optimizer": "adamw"}, "adamw", 0.1),
    ({"optimizer": "adam"}, "adam", 0.0),                     # an L2 term of 0.1 would stop learning
    ({"optimizer": "sgd"}, "sgd", 0.0),
    ({"optimizer": "adam", "weight_decay": 0.01}, "adam", 0.01),
])
def test_diloco_weight_decay_goes_with_its_inner_optimizer(given, optimizer, weight_decay):
    from fda.config import make_config

    cfg = make_config({"strategy": "diloco", **given})
    assert (cfg.resolved("optimizer"), cfg.resolved("weight_decay")) == (optimizer, weight_decay)
