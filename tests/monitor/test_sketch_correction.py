"""The Sketch correction from a failure probability delta, and fresh hashes at every check."""
import math

import numpy as np
import pytest
import torch

from _helpers import drifts, local_state, true_variance
from fda.monitor import SketchMonitor, bound_audit
from fda.monitor.sketch import (check_seed, chi2_quantile, delta_correction, median_failure, paper_correction,
                                row_exceedance)

# Exact chi^2 upper quantiles and corrections, computed independently with scipy.stats
# (chi2.isf, and binom.sf solved for p with brentq).
CHI2_UPPER = [(250, 0.1056, 278.2986), (250, 0.01, 304.9396), (1250, 0.01, 1369.2500), (30, 0.05, 43.7730),
              (100, 0.001, 149.4493)]
EPS = [(5, 250, 0.05, 0.078060), (5, 250, 0.01, 0.113173), (5, 250, 0.001, 0.153906), (3, 250, 0.01, 0.143606),
       (7, 100, 0.01, 0.151824), (4, 250, 0.01, 0.159708), (1, 250, 0.01, 0.219758)]


def test_median_failure_is_the_binomial_tail():
    assert median_failure(1, 0.3) == pytest.approx(0.3)
    assert median_failure(5, 0.1) == pytest.approx(10 * 0.1 ** 3 * 0.9 ** 2 + 5 * 0.1 ** 4 * 0.9 + 0.1 ** 5)
    assert median_failure(4, 0.2) == pytest.approx(1 - 0.8 ** 4 - 4 * 0.2 * 0.8 ** 3)  # >= 2 of 4 rows


@pytest.mark.parametrize("depth", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("delta", [0.2, 0.01, 1e-6])
def test_row_exceedance_is_the_largest_p_within_delta(depth, delta):
    p = row_exceedance(depth, delta)
    assert median_failure(depth, p) <= delta
    assert median_failure(depth, p * (1 + 1e-6) + 1e-15) > delta


@pytest.mark.parametrize("dof,upper,exact", CHI2_UPPER)
def test_chi2_quantile_matches_the_exact_one(dof, upper, exact):
    assert chi2_quantile(dof, upper) == pytest.approx(exact, rel=1e-3)


@pytest.mark.parametrize("depth,width,delta,exact", EPS)
def test_delta_correction_matches_the_exact_derivation(depth, width, delta, exact):
    assert delta_correction(depth, width, delta) == pytest.approx(exact, abs=2e-4)


def test_delta_correction_grows_as_delta_shrinks_and_the_papers_eps_is_delta_009():
    eps = [delta_correction(5, 250, d) for d in (0.2, 0.05, 0.01, 1e-3, 1e-6, 1e-12)]
    assert all(a < b for a, b in zip(eps, eps[1:]))
    assert delta_correction(5, 250, 0.088) == pytest.approx(paper_correction(250), abs=1e-3)


@pytest.mark.parametrize("delta", [0.0, 0.5, -0.1, 1.0])
def test_delta_out_of_range_is_refused(delta):
    with pytest.raises(ValueError, match="sketch_delta must be in"):
        SketchMonitor(5, 250, seed=0, delta=delta)


def test_unknown_correction_is_refused():
    with pytest.raises(ValueError, match="unknown sketch correction 'exact'"):
        SketchMonitor(5, 250, seed=0, correction="exact")


def test_paper_correction_is_one_over_sqrt_m():
    mon = SketchMonitor(5, 250, seed=0, correction="paper", delta=0.3)
    assert mon.eps == pytest.approx(1 / math.sqrt(250))
    assert "paper" in mon.describe() and "delta" in SketchMonitor(5, 250, seed=0).describe()


def test_check_seeds_differ_per_step_and_per_run_seed():
    seeds = {check_seed(s, step) for s in range(5) for step in range(2000)}
    assert len(seeds) == 5 * 2000
    assert all(0 <= s < 2 ** 64 for s in seeds)
    assert check_seed(3, 17) == check_seed(3, 17) == SketchMonitor(5, 250, seed=3).sketch_seed(17)


@pytest.mark.parametrize("kind", ["gaussian", "shared_direction", "sparse"])
def test_failure_rate_per_check_is_delta(kind):
    """Independent checks (one per step, each with its check seed): H < Var at a rate <= delta
    (up to 3 binomial standard deviations), and not far below it (the correction is not loose).
    A hash reused across checks, or a correction derived wrongly, fails this."""
    delta, trials, d = 0.05, 600, 4000
    mon = SketchMonitor(5, 250, seed=11, delta=delta)
    gen = torch.Generator().manual_seed(1)
    fails = 0
    for step in range(trials):
        u = drifts(kind, 4, d, gen)
        states = [local_state(mon, r, seed=mon.sketch_seed(step)) for r in u]
        fails += mon.bound(np.mean(states, axis=0)) < true_variance(u) - 1e-9
    sd = math.sqrt(delta * (1 - delta) / trials)
    assert delta / 2 <= fails / trials <= delta + 3 * sd, fails / trials


def test_bound_audit_counts_checked_steps_only():
    bound = np.array([np.nan, 1.0, 2.0, 0.5, 3.0])
    exact = np.array([0.1, 0.9, 2.0, 1.0, 0.0])
    got = bound_audit(bound, exact)
    assert got["audited_checks"] == 4
    assert got["bound_holds"] == pytest.approx(3 / 4)
    assert got["median_bound_over_var"] == pytest.approx(np.median([1 / 0.9, 1.0, 0.5]))
