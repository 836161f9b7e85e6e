"""Variance monitors: pure math over local state vectors (no MPI, no models).

Each worker turns its drift u_k = w_k - w0 into a small state S_k; the states are
averaged (one Allreduce); a function H of the mean state bounds the model variance

    Var = (1/K) sum_k ||u_k||^2 - ||mean_k u_k||^2   <=   H(mean_k S_k).

See docs/algorithm.md, "The variance bound". `PerWorkerMonitor` is Kamp et al.'s rule (max_k ||u_k||^2,
reduced with MAX), which bounds each worker's drift rather than the variance.

The registry lives here, not in `base` (which its subclasses import): `make_monitor` builds one by name.
"""
from fda.monitor.base import Monitor, bound_audit, exact_variance
from fda.monitor.linear import LinearMonitor
from fda.monitor.naive import NaiveMonitor
from fda.monitor.per_worker import PerWorkerMonitor
from fda.monitor.sketch import DEFAULT_DELTA, SketchMonitor

MONITORS = {"naive": NaiveMonitor, "linear": LinearMonitor, "sketch": SketchMonitor,
            "per_worker": PerWorkerMonitor}


def monitor_names() -> tuple[str, ...]:
    """The values of the `monitor` setting (a strategy may also choose one of the others)."""
    return tuple(name for name, cls in MONITORS.items() if cls.selectable)


def make_monitor(name: str, *, sketch_depth: int = 5, sketch_width: int = 250, seed: int = 0,
                 sketch_correction: str = "delta", sketch_delta: float = DEFAULT_DELTA) -> Monitor:
    """The monitor called `name`; the sketch settings matter only for 'sketch'."""
    if name not in MONITORS:
        raise ValueError(f"unknown monitor '{name}' ({', '.join(MONITORS)})")
    if name == "sketch":
        return SketchMonitor(sketch_depth, sketch_width, seed, correction=sketch_correction, delta=sketch_delta)
    return MONITORS[name]()


__all__ = ["Monitor", "NaiveMonitor", "LinearMonitor", "SketchMonitor", "PerWorkerMonitor",
           "MONITORS", "make_monitor", "monitor_names", "exact_variance", "bound_audit"]
