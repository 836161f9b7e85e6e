"""The sync's one-pass epilogue (fda::mean_epilogue_): the same bits as the torch sequence it
replaces (div_, sub, copy_), for any length, drift length, number of copies and threads."""

from __future__ import annotations

import pytest
import torch

import fda.kernels as K
from fda.kernels import reference as R

native = pytest.mark.skipif(not K._native_has(torch.device("cpu"), "mean_epilogue_"),
                            reason="the native library (make native) is not built")


def _operands(n, n_drift, copies, seed=0):
    g = torch.Generator().manual_seed(seed)
    total = torch.randn(n, generator=g) * 5
    ref = torch.randn(n, generator=g)
    return total, ref, torch.full((n_drift,), float("nan")), [torch.full((n,), float("nan")) for _ in range(copies)]


def _expected(total, divisor, ref, n_drift):
    """The mean, the drift from the old ref and the refreshed ref, as plain torch expressions
    (what ExactMean and the Synchronizer computed before the fused op: div_, sub, copy_)."""
    mean = total / divisor
    return mean, mean[:n_drift] - ref[:n_drift]


def _check(impl, n, divisor, n_drift, copies):
    total, ref, drift, outs = _operands(n, n_drift, copies, seed=n + divisor)
    mean, delta = _expected(total, divisor, ref, n_drift)
    impl(total, divisor, ref, drift if n_drift else None, outs)
    assert torch.equal(total, mean) and torch.equal(ref, mean) and all(torch.equal(c, mean) for c in outs)
    assert torch.equal(drift, delta)


@native
@pytest.mark.parametrize("n", [0, 1, 7, 8191, 8193, 32768 * 4 + 5, 300_001])
@pytest.mark.parametrize("divisor", [1, 3, 5, 8])
def test_native_and_reference_give_the_torch_bits(n, divisor):
    for n_drift in sorted({0, n // 3, n}):
        for copies in (0, 1, 3):
            _check(lambda t, k, r, d, c: K.mean_epilogue_(t, k, ref=r, drift=d, copies=c), n, divisor, n_drift, copies)
            _check(R.mean_epilogue_, n, divisor, n_drift, copies)


@native
def test_without_ref_it_only_divides_and_copies():
    total, _, _, copies = _operands(50_000, 0, 2)
    expected = total / 5
    K.mean_epilogue_(total, 5, copies=copies)
    assert torch.equal(total, expected) and all(torch.equal(c, expected) for c in copies)


@native
def test_the_bits_do_not_depend_on_the_threads():
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            total, ref, drift, copies = _operands(1_000_003, 600_000, 1, seed=9)
            K.mean_epilogue_(total, 7, ref=ref, drift=drift, copies=copies)
            results.append((total, ref, drift, copies[0]))
        assert all(torch.equal(x, y) for x, y in zip(*results))
    finally:
        torch.set_num_threads(before)


@native
@pytest.mark.parametrize("case, match", [
    (lambda t, r: dict(ref=r[:-1]), "ref has"),
    (lambda t, r: dict(ref=r, drift=torch.empty(t.numel() + 1)), "drift has"),
    (lambda t, r: dict(ref=r.double()), "float32"),
    (lambda t, r: dict(copies=[torch.empty(2 * t.numel())[::2]]), "contiguous"),
])
def test_bad_operands_are_refused(case, match):
    total, ref = torch.randn(100), torch.randn(100)
    with pytest.raises(RuntimeError, match=match):
        K.mean_epilogue_(total, 2, **case(total, ref))


def test_drift_needs_ref():
    with pytest.raises(ValueError, match="drift needs ref"):
        K.mean_epilogue_(torch.randn(4), 2, drift=torch.empty(4))
