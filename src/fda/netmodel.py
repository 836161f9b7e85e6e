"""Modelled wall time to a target accuracy on a network (docs/algorithm.md, "Time on a network").

On one machine MPI moves bytes through shared memory, so a run's measured time says nothing
about the networks where communication efficiency matters. This module replays a run's log on
a network of bandwidth B (bytes/s) and per-message latency alpha (s): the run's measured compute
per step, and every Allreduce the run really made, priced with the algorithm MPICH would choose
for that message between nodes (`allreduce_cost`):

- recursive doubling: log2(P') rounds of the whole message (P' the largest power of two <= P),
  plus 2 more (a fold onto P' ranks and the result back) when P is not a power of two;
- reduce-scatter + allgather (Rabenseifner): 2 log2(P') rounds moving 2 (P'-1)/P' n in all,
  plus the same fold of 2 whole messages when P is not a power of two;
- the ring (2(P-1) rounds, 2(P-1)/P n), never MPICH's default choice, on request (`wan:ring`).

MPICH 5 (the mpich wheel, 5.0.2: the tuning tables compiled into it) takes recursive doubling
for a blocking Allreduce of at most 8 bytes or of fewer values than P', Rabenseifner otherwise;
for a non-blocking one (MPI_Iallreduce) the short-message limit is 2048 bytes, the default of
MPIR_CVAR_ALLREDUCE_SHORT_MSG_SIZE.

What is priced, row by row of the step log (`run_traffic`):

- the step exchange started at each step (`exchange_bytes`, `exchange_calls`, `exchange_lag`):
  a blocking one (lag 0) in full; one waited on L >= 1 steps later only where it outlasts what
  the rank did meanwhile, on the critical path of the replay (`_replay`): for an exchange alone
  in flight, max(0, T - L c) with c a step's compute; exchanges in flight together also travel
  during each other's waits;
- each sync: one Allreduce of the model at the width it sends, its size from the paper
  accounting in the log (a sync adds 2 K n_sync bytes to comm_bytes): blocking, or with
  sync_delay = D (the run's config) a non-blocking one that travels while the D steps after its
  start compute and is waited on at the last of them, so only what outlasts them is paid;
- compute: the median step time (one worker's share when a rank hosted W workers) for every
  step, plus the monitor's kernel time logged at each step.

P = K, the number of workers, not the MPI ranks of the measured run: the deployment modelled
has one worker per node. A log written before the exchange columns existed is priced as before
them: its checks only (steps with a finite var_bound), each a blocking Allreduce of 4 |S| bytes.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass

import numpy as np

from fda.sync.accounting import FLOAT_BYTES

__all__ = ["FLOAT_BYTES", "Network", "PROFILES", "NetworkError", "ALGORITHMS", "SELECTIONS", "AllreduceCost",
           "Message", "ModelledTime", "parse_network", "pof2", "mpich_algorithm", "algorithm_cost",
           "allreduce_cost", "ring_allreduce_time", "run_traffic", "model_run", "modelled_time_to_target"]

RECURSIVE_DOUBLING = "recursive_doubling"
REDUCE_SCATTER_ALLGATHER = "reduce_scatter_allgather"
RING = "ring"
NONE = "none"  # one rank, or nothing to send
ALGORITHMS = (RECURSIVE_DOUBLING, REDUCE_SCATTER_ALLGATHER, RING)
SELECTIONS = ("mpich", *ALGORITHMS)  # how a Network picks each Allreduce's algorithm

# MPICH 5's limits for recursive doubling (maint/tuning/coll/mpir/generic.json, as compiled into
# the wheel's libmpi): blocking Allreduce "avg_msg_size<=8", MPI_Iallreduce "avg_msg_size<=2048".
SHORT_BLOCKING_BYTES = 8
SHORT_NONBLOCKING_BYTES = 2048
EXCHANGE_ITEM_BYTES = 8  # the step exchange packs float64 values (fda.sync.exchange)


class NetworkError(ValueError):
    """A --network value that cannot be parsed."""


@dataclass(frozen=True)
class Network:
    name: str
    bandwidth: float  # bytes per second
    latency: float    # seconds per message (alpha)
    allreduce: str = "mpich"  # one of SELECTIONS

    def describe(self) -> str:
        how = "" if self.allreduce == "mpich" else f", every Allreduce by {self.allreduce}"
        return f"{self.name}: {_format_rate(self.bandwidth)}, latency {_format_time(self.latency)}{how}"


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


def _brief_time(seconds: float) -> str:
    """Three significant digits in a readable unit."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return "0 s" if seconds == 0 else f"{seconds / 1e-9:.3g} ns"


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
    a bare number is bit/s or s), optionally with ``:ALGORITHM`` to price every Allreduce by one
    algorithm instead of MPICH's choice (``wan:ring``; recursive_doubling, reduce_scatter_allgather)."""
    base, allreduce = spec, "mpich"
    if ":" in spec:
        base, allreduce = spec.rsplit(":", 1)
        allreduce = allreduce.strip().lower()
        if allreduce not in SELECTIONS:
            raise NetworkError(f"--network {spec!r}: unknown Allreduce algorithm {allreduce!r} "
                               f"(one of {', '.join(SELECTIONS)})")
    net = _parse_base(base, spec)
    if allreduce == "mpich" and base == spec:
        return net
    return dataclasses.replace(net, name=spec.strip(), allreduce=allreduce)


def _parse_base(base: str, spec: str) -> Network:
    key = base.strip().lower()
    if key in PROFILES:
        return PROFILES[key]
    if "," not in base:
        raise NetworkError(f"--network {spec!r}: not a profile ({', '.join(PROFILES)}) nor BANDWIDTH,LATENCY "
                           "(e.g. 1Gbit/s,2ms)")
    rate, latency = base.split(",", 1)
    return Network(base.strip(), _quantity(rate, "bandwidth", spec), _quantity(latency, "latency", spec))


# ------------------------------------------------------------------ one Allreduce
@dataclass(frozen=True)
class AllreduceCost:
    """One Allreduce on a network: the algorithm, the messages on its critical path, its time."""
    algorithm: str
    rounds: int
    seconds: float


def pof2(ranks: int) -> int:
    """The largest power of two <= ranks (ranks >= 1)."""
    return 1 << (int(ranks).bit_length() - 1)


def mpich_algorithm(n_bytes: float, ranks: int, *, item_bytes: int = FLOAT_BYTES, blocking: bool = True) -> str:
    """The algorithm MPICH 5 takes for an Allreduce of ``n_bytes`` per rank (values of ``item_bytes``,
    a built-in operation) over ``ranks`` ranks: recursive doubling for a short message or fewer
    values than the largest power of two <= ranks, reduce-scatter + allgather otherwise."""
    if ranks <= 1 or n_bytes <= 0:
        return NONE
    short = SHORT_BLOCKING_BYTES if blocking else SHORT_NONBLOCKING_BYTES
    if n_bytes <= short or n_bytes // item_bytes < pof2(ranks):
        return RECURSIVE_DOUBLING
    return REDUCE_SCATTER_ALLGATHER


def algorithm_cost(algorithm: str, n_bytes: float, ranks: int, net: Network) -> AllreduceCost:
    """``algorithm``'s time for ``n_bytes`` per rank over ``ranks`` ranks: rounds * alpha + bytes moved / B,
    both along the critical path (the reduction's arithmetic is not priced)."""
    p, n = int(ranks), float(n_bytes)
    if p <= 1 or n <= 0:
        return AllreduceCost(NONE, 0, 0.0)
    q = pof2(p)
    log_q = q.bit_length() - 1
    fold = 0 if q == p else 2  # a non-power of two: the extra ranks' data in, the result back out
    if algorithm == RECURSIVE_DOUBLING:
        rounds, moved = log_q + fold, (log_q + fold) * n
    elif algorithm == REDUCE_SCATTER_ALLGATHER:
        rounds, moved = 2 * log_q + fold, (2 * (q - 1) / q + fold) * n
    elif algorithm == RING:
        rounds, moved = 2 * (p - 1), 2 * (p - 1) / p * n
    else:
        raise ValueError(f"unknown Allreduce algorithm {algorithm!r} (one of {', '.join(ALGORITHMS)})")
    return AllreduceCost(algorithm, rounds, rounds * net.latency + moved / net.bandwidth)


def allreduce_cost(n_bytes: float, ranks: int, net: Network, *, item_bytes: int = FLOAT_BYTES,
                   blocking: bool = True) -> AllreduceCost:
    """One Allreduce priced by ``net``'s choice of algorithm (MPICH's, or the one it forces)."""
    algorithm = (mpich_algorithm(n_bytes, ranks, item_bytes=item_bytes, blocking=blocking)
                 if net.allreduce == "mpich" else net.allreduce)
    return algorithm_cost(algorithm, n_bytes, ranks, net) if algorithm != NONE else AllreduceCost(NONE, 0, 0.0)


def ring_allreduce_time(n_bytes: float | np.ndarray, ranks: int, net: Network) -> float | np.ndarray:
    """Ring Allreduce of ``n_bytes`` per rank over ``ranks`` ranks (0 for one rank); arrays elementwise."""
    p = int(ranks)
    if p <= 1:
        return 0.0 * np.asarray(n_bytes, dtype=float) if isinstance(n_bytes, np.ndarray) else 0.0
    return 2 * (p - 1) / p * n_bytes / net.bandwidth + 2 * (p - 1) * net.latency


# ------------------------------------------------------------------ a run's traffic
@dataclass
class Traffic:
    """Per step (rows of the run's log): the Allreduces the run made, and their sizes."""
    step: np.ndarray            # step numbers
    synced: np.ndarray          # bool: a model Allreduce
    sync_bytes: np.ndarray      # one worker's model message on synced steps (0 elsewhere)
    exchange_bytes: np.ndarray  # bytes per rank of the exchange started at the step (0: none)
    exchange_calls: np.ndarray  # its Allreduces (2: a second one of the state alone)
    exchange_lag: np.ndarray    # steps of compute before its wait (0: blocking)
    item_bytes: int             # width of the exchange's values
    second_call_bytes: float    # a two-call exchange's second Allreduce (the state part)
    step_compute: float         # one worker's compute per step (median), seconds
    monitor: np.ndarray         # one worker's monitor (state kernel) time per step, seconds
    from_exchange_columns: bool  # False: an older log, its checks stand for the exchanges
    sync_delay: int = 0          # steps of compute a sync's Allreduce overlaps (0: blocking)


def run_traffic(steps: dict, attrs: dict) -> Traffic:
    """Read a run's Allreduces from its step arrays (``fda.h5log``) and root attributes."""
    K = int(attrs.get("workers", 1))
    W = max(1, int(attrs.get("workers_per_rank", 1)))
    step = np.asarray(steps["step"])
    checked = np.isfinite(np.asarray(steps["var_bound"], dtype=float))
    synced = np.asarray(steps["synced"]).astype(bool)
    state_floats = float(attrs.get("state_floats", 0))
    check_bytes = FLOAT_BYTES * state_floats  # the paper accounting's check, per worker
    added = np.diff(np.asarray(steps["comm_bytes"], dtype=float), prepend=0.0)
    sync_bytes = np.where(synced, (added - checked * K * check_bytes) / (2 * max(K, 1)), 0.0)
    compute = np.asarray(steps["time_compute"], dtype=float)
    if "exchange_bytes" in steps:
        exchange = (np.asarray(steps["exchange_bytes"], dtype=float), np.asarray(steps["exchange_calls"], dtype=int),
                    np.asarray(steps["exchange_lag"], dtype=int))
        item_bytes, second = EXCHANGE_ITEM_BYTES, EXCHANGE_ITEM_BYTES * state_floats
    else:
        exchange = (np.where(checked, check_bytes, 0.0), checked.astype(int), np.zeros(step.size, dtype=int))
        item_bytes, second = FLOAT_BYTES, 0.0
    return Traffic(step=step, synced=synced, sync_bytes=np.maximum(sync_bytes, 0.0),
                   exchange_bytes=exchange[0], exchange_calls=exchange[1], exchange_lag=exchange[2],
                   item_bytes=item_bytes, second_call_bytes=second,
                   step_compute=float(np.nanmedian(compute)) / W if compute.size else 0.0,
                   monitor=np.nan_to_num(np.asarray(steps["time_monitor"], dtype=float)) / W,
                   from_exchange_columns="exchange_bytes" in steps, sync_delay=_sync_delay(attrs))


def _sync_delay(attrs: dict) -> int:
    try:
        return int(json.loads(attrs.get("config") or "{}").get("sync_delay") or 0)
    except (TypeError, ValueError):
        return 0


def _call_sizes(total: float, calls: int, second: float) -> tuple[float, ...]:
    """Bytes of each Allreduce of one exchange: the first carries the head and the state, any
    further one the state alone (split evenly if the log's sizes do not fit that shape)."""
    if calls <= 1:
        return (total,)
    rest = (calls - 1) * second
    if not 0 < rest < total:
        return (total / calls,) * calls
    return (total - rest,) + (second,) * (calls - 1)


# ------------------------------------------------------------------ the replay
@dataclass(frozen=True)
class Message:
    """A kind of Allreduce a run made (up to the target step): what it cost each time."""
    kind: str                    # "exchange", "sync" ("check": an older log's check)
    sizes: tuple[float, ...]     # bytes per rank of each Allreduce it makes
    lag: int                     # steps of compute it overlaps (0: blocking)
    count: int                   # how many times, up to the target step
    costs: tuple[AllreduceCost, ...]

    @property
    def seconds(self) -> float:
        return sum(c.seconds for c in self.costs)

    def describe(self) -> str:
        sizes = " + ".join(f"{s:,.0f} B" for s in self.sizes)
        how = " + ".join(f"{c.algorithm} ({c.rounds} rounds)" for c in self.costs)
        lag = f", waited {self.lag} steps later" if self.lag else ""
        return f"{self.kind} {sizes}{lag}: {how}, {_brief_time(self.seconds)} each, x {self.count:,}"


@dataclass(frozen=True)
class ModelledTime:
    """A run's modelled time to its target step, and where it goes."""
    total: float
    compute: float        # steps x median step + monitor time
    exchange_wait: float  # what the step exchanges added to the critical path
    sync: float           # what the syncs' Allreduces added to the critical path
    messages: tuple[Message, ...]

    def describe(self) -> list[str]:
        return [f"modelled {_brief_time(self.total)}: compute {_brief_time(self.compute)}, "
                f"exchange waits {_brief_time(self.exchange_wait)}, syncs {_brief_time(self.sync)}"] + \
            [m.describe() for m in self.messages]


def _exchange_prices(t: Traffic, rows: np.ndarray, K: int, net: Network) -> tuple[np.ndarray, list[Message]]:
    """Seconds of the exchange started at each of ``rows`` (0 where none), and the kinds priced."""
    seconds = np.zeros(rows.size)
    messages = []
    kind = "exchange" if t.from_exchange_columns else "check"
    keys = np.stack([t.exchange_bytes[rows], t.exchange_calls[rows], t.exchange_lag[rows]], axis=1)
    started = (keys[:, 0] > 0) & (keys[:, 1] > 0)
    for total, calls, lag in np.unique(keys[started], axis=0):
        sizes = _call_sizes(float(total), int(calls), t.second_call_bytes)
        costs = tuple(allreduce_cost(s, K, net, item_bytes=t.item_bytes, blocking=lag == 0) for s in sizes)
        same = started & np.all(keys == (total, calls, lag), axis=1)
        seconds[same] = sum(c.seconds for c in costs)
        messages.append(Message(kind, sizes, int(lag), int(np.count_nonzero(same)), costs))
    return seconds, messages


def _sync_prices(t: Traffic, rows: np.ndarray, K: int, net: Network) -> tuple[np.ndarray, list[Message]]:
    seconds = np.zeros(rows.size)
    messages = []
    synced = t.synced[rows]
    sizes = t.sync_bytes[rows]
    for n in np.unique(sizes[synced]):
        cost = allreduce_cost(float(n), K, net, blocking=t.sync_delay == 0)
        same = synced & (sizes == n)
        seconds[same] = cost.seconds
        messages.append(Message("sync", (float(n),), t.sync_delay, int(np.count_nonzero(same)), (cost,)))
    return seconds, messages


def _replay(step: np.ndarray, compute: float, monitor: np.ndarray, exchange: np.ndarray, lag: np.ndarray,
            sync: np.ndarray, sync_delay: int = 0) -> tuple[float, float]:
    """The end of the last step on the critical path, and the syncs' share of it. A step
    computes, starts its exchange (a blocking one completes before the step goes on), waits on
    the exchange due at this step (started ``lag`` steps before: it has travelled since its
    start), then on the sync due at this step (started ``sync_delay`` steps before), then syncs
    (a blocking sync completes here; an overlapped one starts)."""
    end = sync_paid = 0.0
    due: dict[int, float] = {}       # step -> when the exchange waited on at that step completes
    sync_due: dict[int, float] = {}  # step -> when the sync that lands at that step completes
    for s, mon, ex, l, sy in zip(step.tolist(), monitor.tolist(), exchange.tolist(), lag.tolist(), sync.tolist()):
        start = end + compute + mon
        end = start
        if l <= 0:
            end += ex
        elif ex > 0:
            due[s + l] = max(due.get(s + l, 0.0), start + ex)
        end = max(end, due.pop(s, 0.0))
        landed = max(end, sync_due.pop(s, 0.0))
        sync_paid += landed - end
        end = landed
        if sync_delay <= 0:
            end += sy
            sync_paid += sy
        elif sy > 0:
            sync_due[s + sync_delay] = end + sy
    return end, sync_paid


def model_run(steps: dict, attrs: dict, target_step: int | None, net: Network) -> ModelledTime | None:
    """A run's modelled time to ``target_step`` on ``net``, with what each Allreduce cost (None if the
    target was not reached)."""
    if target_step is None:
        return None
    t = run_traffic(steps, attrs)
    K = int(attrs.get("workers", 1))
    rows = np.flatnonzero(t.step <= target_step)
    exchange, exchange_kinds = _exchange_prices(t, rows, K, net)
    sync, sync_kinds = _sync_prices(t, rows, K, net)
    compute = rows.size * t.step_compute + float(np.sum(t.monitor[rows]))
    total, sync_paid = _replay(t.step[rows], t.step_compute, t.monitor[rows], exchange, t.exchange_lag[rows],
                               sync, t.sync_delay)
    return ModelledTime(total=total, compute=compute, exchange_wait=max(0.0, total - compute - sync_paid),
                        sync=sync_paid, messages=tuple(exchange_kinds + sync_kinds))


def modelled_time_to_target(steps: dict, attrs: dict, target_step: int | None, net: Network) -> float | None:
    """Modelled seconds to reach ``target_step`` on ``net`` (None if the target was not reached)."""
    modelled = model_run(steps, attrs, target_step, net)
    return modelled.total if modelled is not None and math.isfinite(modelled.total) else None
