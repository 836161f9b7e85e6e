"""Variance monitors: pure math over local state vectors (no MPI, no models).

Each worker turns its drift u_k = w_k - w0 into a small state S_k; the states are
averaged (one Allreduce); a function H of the mean state bounds the model variance

    Var = (1/K) sum_k ||u_k||^2 - ||mean_k u_k||^2   <=   H(mean_k S_k).

See FDA.md section 2. `PerWorkerMonitor` is Kamp et al.'s rule (max_k ||u_k||^2,
reduced with MAX), which bounds each worker's drift rather than the variance.
"""
from fda.monitor.base import Monitor, exact_variance, make_monitor
from fda.monitor.linear import LinearMonitor
from fda.monitor.naive import NaiveMonitor
from fda.monitor.per_worker import PerWorkerMonitor
from fda.monitor.sketch import SketchMonitor

__all__ = ["Monitor", "NaiveMonitor", "LinearMonitor", "SketchMonitor", "PerWorkerMonitor",
           "make_monitor", "exact_variance"]
