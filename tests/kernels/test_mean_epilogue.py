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


def _torch_sequence(total, divisor, ref, drift, copies):
    """What collectives.ExactMean and the Synchronizer did before the fused op, spelled out."""
    total.div_(divisor)
    if drift is not None:
        torch.sub(total[:drift.numel()], ref[:drift.numel()], out=drift)
    if ref is not None:
        ref.copy_(total)
    for c in copies:
        c.copy_(total)


@native
@pytest.mark.parametrize("n", [0, 1, 7, 8191, 8193, 32768 * 4 + 5, 300_001])
@pytest.mark.parametrize("divisor", [1, 3, 5, 8])
def test_native_matches_the_torch_sequence_bit_for_bit(n, divisor):
    for n_drift in sorted({0, n // 3, n}):
        for copies in (0, 1, 3):
            a = _operands(n, n_drift, copies, seed=n + divisor)
            b = [t.clone() if isinstance(t, torch.Tensor) else [c.clone() for c in t] for t in a]
            K.mean_epilogue_(a[0], divisor, ref=a[1], drift=a[2] if n_drift else None, copies=a[3])
            _torch_sequence(b[0], divisor, b[1], b[2] if n_drift else None, b[3])
            for x, y in zip([a[0], a[1], a[2], *a[3]], [b[0], b[1], b[2], *b[3]]):
                assert torch.equal(x, y) or (x.numel() == 0 and y.numel() == 0)


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


def test_the_reference_is_the_torch_sequence():
    a = _operands(10_000, 4_000, 2, seed=3)
    b = [t.clone() if isinstance(t, torch.Tensor) else [c.clone() for c in t] for t in a]
    R.mean_epilogue_(a[0], 6, a[1], a[2], a[3])
    _torch_sequence(b[0], 6, b[1], b[2], b[3])
    assert all(torch.equal(x, y) for x, y in zip([a[0], a[1], a[2], *a[3]], [b[0], b[1], b[2], *b[3]]))


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
