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
