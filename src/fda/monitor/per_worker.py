from __future__ import annotations

from fda.monitor.naive import NaiveMonitor


class PerWorkerMonitor(NaiveMonitor):
    """Kamp et al. (2018): sync when max_k ||u_k||^2 > theta. The naive state (one float per
    worker), reduced with MAX instead of averaged: it bounds each worker's drift, not the variance."""

    name = "per_worker"
    reduce_op = "max"
