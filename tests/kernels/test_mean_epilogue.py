"""The sync's one-pass epilogue (fda::mean_epilogue_): the same bits as the torch sequence it
replaces (div_, sub, copy_), for any length, update length, number of copies and threads; its
fake (meta) kernel, checked with torch.library.opcheck; and the deprecated drift= keyword."""

from __future__ import annotations

import pytest
import torch

import fda.kernels as K
from fda.kernels import reference as R

native = pytest.mark.skipif(not K._native_has(torch.device("cpu"), "mean_epilogue_"),
                            reason="the native library (make native) is not built")


def _operands(n, n_update, copies, seed=0):
    g = torch.Generator().manual_seed(seed)
    total = torch.randn(n, generator=g) * 5
    ref = torch.randn(n, generator=g)
    return total, ref, torch.full((n_update,), float("nan")), [torch.full((n,), float("nan")) for _ in range(copies)]


def _expected(total, divisor, ref, n_update):
    """The mean, the update from the old ref and the refreshed ref, as plain torch expressions
    (what ExactMean and the Synchronizer computed before the fused op: div_, sub, copy_)."""
    mean = total / divisor
    return mean, mean[:n_update] - ref[:n_update]


def _check(impl, n, divisor, n_update, copies):
    total, ref, update, outs = _operands(n, n_update, copies, seed=n + divisor)
    mean, delta = _expected(total, divisor, ref, n_update)
    impl(total, divisor, ref, update if n_update else None, outs)
    assert torch.equal(total, mean) and torch.equal(ref, mean) and all(torch.equal(c, mean) for c in outs)
    assert torch.equal(update, delta)


@native
@pytest.mark.parametrize("n", [0, 1, 7, 8191, 8193, 32768 * 4 + 5, 300_001])
@pytest.mark.parametrize("divisor", [1, 3, 5, 8])
def test_native_and_reference_give_the_torch_bits(n, divisor):
    for n_update in sorted({0, n // 3, n}):
        for copies in (0, 1, 3):
            _check(lambda t, k, r, d, c: K.mean_epilogue_(t, k, ref=r, update=d, copies=c), n, divisor, n_update, copies)
            _check(R.mean_epilogue_, n, divisor, n_update, copies)


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
            total, ref, update, copies = _operands(1_000_003, 600_000, 1, seed=9)
            K.mean_epilogue_(total, 7, ref=ref, update=update, copies=copies)
            results.append((total, ref, update, copies[0]))
        assert all(torch.equal(x, y) for x, y in zip(*results))
    finally:
        torch.set_num_threads(before)


@native
@pytest.mark.parametrize("case, match", [
    (lambda t, r: dict(ref=r[:-1]), "ref has"),
    (lambda t, r: dict(ref=r, update=torch.empty(t.numel() + 1)), "update has"),
    (lambda t, r: dict(ref=r.double()), "float32"),
    (lambda t, r: dict(copies=[torch.empty(2 * t.numel())[::2]]), "contiguous"),
])
def test_bad_operands_are_refused(case, match):
    total, ref = torch.randn(100), torch.randn(100)
    with pytest.raises(RuntimeError, match=match):
        K.mean_epilogue_(total, 2, **case(total, ref))


def test_update_needs_ref():
    with pytest.raises(ValueError, match="update needs ref"):
        K.mean_epilogue_(torch.randn(4), 2, update=torch.empty(4))


def test_the_deprecated_drift_keyword_still_works():
    total, ref, update, _ = _operands(1000, 400, 0, seed=3)
    mean, delta = _expected(total, 4, ref, 400)
    with pytest.warns(DeprecationWarning, match="update="):
        K.mean_epilogue_(total, 4, ref=ref, drift=update)
    assert torch.equal(total, mean) and torch.equal(update, delta)
    with pytest.raises(TypeError, match="update= only"):
        K.mean_epilogue_(total, 4, ref=ref, update=update, drift=update)


@native
@pytest.mark.parametrize("n_update", [0, 17])
def test_opcheck_mean_epilogue(n_update):
    """Schema, fake (meta) kernel, autograd registration and AOT dispatch of fda::mean_epilogue_."""
    total, ref, update, copies = _operands(64, n_update, 2, seed=5)
    torch.library.opcheck(torch.ops.fda.mean_epilogue_.default,
                          (total, 3.0, ref if n_update else None, update if n_update else None, copies))


@native
@pytest.mark.parametrize("xi, depth, width", [(False, 0, 0), (True, 0, 0), (True, 3, 16)])
def test_opcheck_drift_state_out(xi, depth, width):
    """The same checks for fda::drift_state_out (its fake kernel writes nothing and returns nothing)."""
    g = torch.Generator().manual_seed(11)
    w, w0, x = (torch.randn(300, generator=g) for _ in range(3))
    out = torch.empty(K.packed_size(depth, width), dtype=torch.float64)
    torch.library.opcheck(torch.ops.fda.drift_state_out.default, (w, w0, x if xi else None, depth, width, 7, out))


@native
def test_the_fake_kernels_trace_without_data():
    """Under FakeTensorMode the ops run on shapes alone (what torch.compile's tracing needs)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        total, ref, update = torch.empty(10), torch.empty(10), torch.empty(4)
        assert torch.ops.fda.mean_epilogue_(total, 2.0, ref, update, []) is None
        out = torch.empty(K.packed_size(2, 5), dtype=torch.float64)
        assert torch.ops.fda.drift_state_out(total, ref, None, 2, 5, 0, out) is None
