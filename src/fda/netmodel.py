"""Modelled wall time to a target accuracy on a network (docs/algorithm.md, "Time on a network").

On one machine MPI moves bytes through shared memory, so a run's measured time says nothing
about the networks where communication efficiency matters. This module prices each run's
Allreduces on a network of bandwidth B (bytes/s) and per-message latency alpha (s) with the
standard ring-Allreduce cost (a reduce-scatter then an allgather, each P-1 rounds of n/P bytes
per rank; Patarasuk & Yuan 2009, Thakur, Rabenseifner & Gropp 2005):

    T(n, P) = 2 (P-1)/P * n / B  +  2 (P-1) * alpha

and adds it to the run's measured compute:

    time to target = s* * median(compute per step) / W  +  monitor time up to s* / W
                     + sum over checks up to s*: T(4 |S|, K)  +  sum over syncs up to s*: T(n_sync, K)

- s*: the step of the first evaluation reaching the target (as for steps and GB to target).
- P = K, the number of workers, not the MPI ranks of the measured run: the deployment being
  modelled has one worker per node (the paper's setting, and what its byte accounting counts);
  ranks hosting several workers are how K workers are simulated on a small machine.
- W = workers per rank: a rank runs its W workers one after the other, so one worker's step
  takes 1/W of the rank's measured time (on its own node the workers run in parallel).
- The median step (not the sum) leaves out the evaluations and checkpoints, which also fall
  between steps, and bursts of load from other processes on a shared machine.
- Checks: the steps where the monitor ran (``var_bound`` finite; strategies fda, kamp, fda_opt);
  each Allreduces one worker's state, 4 |S| bytes (float32, as the paper counts it).
- Syncs: each Allreduces one worker's model; its size comes from the paper accounting in the
  log (a sync adds 2 K n_sync bytes), so a compressed sync is priced at the width it sends.
- The per-step Allreduce of the loss (3 floats) that this implementation does for every
  strategy is a health check, not part of any algorithm, and is not priced.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

__all__ = ["FLOAT_BYTES", "Network", "PROFILES", "NetworkError", "parse_network", "ring_allreduce_time", "run_traffic",
           "modelled_time_to_target"]

FLOAT_BYTES = 4  # the paper's byte accounting counts float32 values


class NetworkError(ValueError):
    """A --network value that cannot be parsed."""


@dataclass(frozen=True)
class Network:
    name: str
    bandwidth: float  # bytes per second
    latency: float    # seconds per message (alpha)

    def describe(self) -> str:
        return f"{self.name}: {_format_rate(self.bandwidth)}, latency {_format_time(self.latency)}"


PROFILES: dict[str, Network] = {
    "datacenter": Network("datacenter", 100e9 / 8, 5e-6),   # 100 Gbit/s fabric (InfiniBand class)
    "ethernet": Network("ethernet", 10e9 / 8, 50e-6),       # 10 Gbit/s cluster Ethernet
    "wan": Network("wan", 100e6 / 8, 20e-3),                # 100 Mbit/s federated wide-area link
}

_BIT_UNITS = {"bit/s": 1 / 8, "kbit/s": 1e3 / 8, "Mbit/s": 1e6 / 8, "Gbit/s": 1e9 / 8,
              "bps": 1 / 8, "kbps": 1e3 / 8, "Mbps": 1e6 / 8, "Gbps": 1e9 / 8}
_BYTE_UNITS = {"B/s": 1.0, "kB/s": 1e3, "MB/s": 1e6, "GB/s": 1e9}
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(\S*)\s*$")


def _format_rate(bytes_per_s: float) -> str:
    bits = bytes_per_s * 8
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bits >= scale:
            return f"{bits / scale:g} {unit}"
    return f"{bits:g} bit/s"


def _format_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:g} {unit}"
    return f"{seconds / 1e-9:g} ns"


def _unit_scale(unit: str, units: dict[str, float], case_free: dict[str, float]) -> float | None:
    """Exact unit names first (B/s is bytes, b is never guessed), then bit and time units in any case."""
    if unit in units:
        return units[unit]
    return {k.lower(): v for k, v in case_free.items()}.get(unit.lower())


def _quantity(text: str, what: str, spec: str) -> float:
    units, case_free, default = ((_BIT_UNITS | _BYTE_UNITS, _BIT_UNITS, "bit/s") if what == "bandwidth"
                                 else (_TIME_UNITS, _TIME_UNITS, "s"))
    m = _NUMBER.match(text)
    scale = _unit_scale(m.group(2) or default, units, case_free) if m else None
    if scale is None:
        raise NetworkError(f"--network {spec!r}: cannot read the {what} {text.strip()!r} "
                           f"(a number with a unit: {', '.join(units)})")
    value = float(m.group(1)) * scale
    if what == "bandwidth" and not value > 0:
        raise NetworkError(f"--network {spec!r}: the bandwidth must be > 0")
    return value


def parse_network(spec: str) -> Network:
    """A profile name (datacenter, ethernet, wan) or ``BANDWIDTH,LATENCY`` such as ``1Gbit/s,2ms``
    (bandwidth units bit/s, kbit/s, Mbit/s, Gbit/s or B/s, kB/s, MB/s, GB/s; latency s, ms, us, ns;
    a bare number is bit/s or s)."""
    key = spec.strip().lower()
    if key in PROFILES:
        return PROFILES[key]
    if "," not in spec:
        raise NetworkError(f"--network {spec!r}: not a profile ({', '.join(PROFILES)}) nor BANDWIDTH,LATENCY "
                           "(e.g. 1Gbit/s,2ms)")
    rate, latency = spec.split(",", 1)
    return Network(spec.strip(), _quantity(rate, "bandwidth", spec), _quantity(latency, "latency", spec))


def ring_allreduce_time(n_bytes: float | np.ndarray, ranks: int, net: Network) -> float | np.ndarray:
    """Ring Allreduce of ``n_bytes`` per rank over ``ranks`` ranks (0 for one rank)."""
    p = int(ranks)
    if p <= 1:
        return 0.0 * np.asarray(n_bytes, dtype=float) if isinstance(n_bytes, np.ndarray) else 0.0
    return 2 * (p - 1) / p * n_bytes / net.bandwidth + 2 * (p - 1) * net.latency


@dataclass
class Traffic:
    """Per step (rows of the run's log): the Allreduces a deployment would make, and their sizes."""
    step: np.ndarray        # step numbers
    checked: np.ndarray     # bool: a state Allreduce
    synced: np.ndarray      # bool: a model Allreduce
    state_bytes: float      # one worker's state message
    sync_bytes: np.ndarray  # one worker's model message on synced steps (0 elsewhere)
    step_compute: float     # one worker's compute per step (median), seconds
    monitor: np.ndarray     # one worker's monitor (state kernel) time per step, seconds


def run_traffic(steps: dict, attrs: dict) -> Traffic:
    """Read a run's Allreduces from its step arrays (``fda.h5log``) and root attributes."""
    K = int(attrs.get("workers", 1))
    W = max(1, int(attrs.get("workers_per_rank", 1)))
    step = np.asarray(steps["step"])
    checked = np.isfinite(np.asarray(steps["var_bound"], dtype=float))
    synced = np.asarray(steps["synced"]).astype(bool)
    state_bytes = FLOAT_BYTES * float(attrs.get("state_floats", 0))
    added = np.diff(np.asarray(steps["comm_bytes"], dtype=float), prepend=0.0)
    sync_bytes = np.where(synced, (added - checked * K * state_bytes) / (2 * max(K, 1)), 0.0)
    compute = np.asarray(steps["time_compute"], dtype=float)
    return Traffic(step=step, checked=checked, synced=synced, state_bytes=state_bytes,
                   sync_bytes=np.maximum(sync_bytes, 0.0),
                   step_compute=float(np.nanmedian(compute)) / W if compute.size else 0.0,
                   monitor=np.nan_to_num(np.asarray(steps["time_monitor"], dtype=float)) / W)


def modelled_time_to_target(steps: dict, attrs: dict, target_step: int | None, net: Network) -> float | None:
    """Modelled seconds to reach ``target_step`` on ``net`` (None if the target was not reached)."""
    if target_step is None:
        return None
    t = run_traffic(steps, attrs)
    upto = t.step <= target_step
    K = int(attrs.get("workers", 1))
    comm = (np.count_nonzero(t.checked & upto) * ring_allreduce_time(t.state_bytes, K, net)
            + float(np.sum(ring_allreduce_time(t.sync_bytes[t.synced & upto], K, net))))
    compute = target_step * t.step_compute + float(np.sum(t.monitor[upto]))
    result = compute + comm
    return result if math.isfinite(result) else None
