"""Benchmark row 1, the physical limit: the core's own scoring speed, in-process, no HTTP.

Random non-negative float32 factors of the stated shape (the speed of a product and a top-k does not depend on
how the factors were fitted), 40 seen items excluded per user as the served path does, k = 10. Measured through
the core's public path ``NMFRecommender.recommend_vectors`` — the call the model service makes — and, for
reference, the naive path (one product ``W[u] @ H.T``, excluded items masked, ``np.argpartition`` then a sort).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

K = 10
SEEN_PER_USER = 40
POOL_USERS = 4096


def _core_model(item_factors: np.ndarray):
    from timbral.nmf import NMFRecommender

    model = NMFRecommender(n_components=item_factors.shape[1])
    model.item_factors = item_factors
    return model


def naive_topk(vectors: np.ndarray, item_factors: np.ndarray, k: int, seen: list[np.ndarray]) -> np.ndarray:
    scores = vectors @ item_factors.T
    scores[np.repeat(np.arange(len(seen)), [len(s) for s in seen]), np.concatenate(seen)] = -np.inf
    part = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _timed(fn: Callable[[int], None], seconds: float, min_calls: int = 3) -> tuple[list[float], float, float]:
    """Call ``fn(i)`` for ``seconds`` (at least ``min_calls`` times): per-call wall times, total wall, total CPU."""
    fn(0)  # warm caches and allocations
    times = []
    started, cpu0 = time.perf_counter(), time.thread_time()
    i = 0
    while i < min_calls or time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
        i += 1
    return times, time.perf_counter() - started, time.thread_time() - cpu0


def _workload(n_items: int, factors: int, seed: int):
    """``(model, user vectors, seen lists)``: random factors for ``n_items`` items and ``POOL_USERS`` users."""
    rng = np.random.default_rng(seed)
    item_factors = rng.random((n_items, factors), dtype=np.float32)
    users = rng.random((POOL_USERS, factors), dtype=np.float32)
    seen = list(rng.integers(0, n_items, size=(POOL_USERS, SEEN_PER_USER)))  # a rare repeat masks nothing new
    return _core_model(item_factors), users, seen


def _batched_call(model, users: np.ndarray, seen: list, batch: int) -> Callable[[int], None]:
    n_batches = POOL_USERS // batch

    def batched(i: int) -> None:
        lo = (i % n_batches) * batch
        model.recommend_vectors(users[lo:lo + batch], K, seen=seen[lo:lo + batch])
    return batched


class LimitProbe:
    """The batched limit of one catalogue size, measured again and again *beside* the served rows.

    The machine's speed drifts within a run (a shared host): a limit measured only at the start, minutes
    before the served sweep it is compared with, can be off either way. The benchmark calls
    :meth:`measure` once per load level, between the served measurements, on a workload built once.
    """

    def __init__(self, n_items: int, factors: int = 64, batch: int = 64, seed: int = 0) -> None:
        self.n_items, self.batch = n_items, batch
        self._call = _batched_call(*_workload(n_items, factors, seed), batch)
        self.readings: list[dict] = []

    def measure(self, seconds: float, concurrency: int | None = None) -> float:
        """Batched users/s over ``seconds``; kept in ``readings`` with the load level it was taken at."""
        times, wall, _ = _timed(self._call, seconds)
        users_per_s = len(times) * self.batch / wall
        self.readings.append({"concurrency": concurrency, "batched_users_per_s": users_per_s})
        return users_per_s

    def as_dict(self) -> dict:
        values = [r["batched_users_per_s"] for r in self.readings]
        return {"n_items": self.n_items, "batch": self.batch, "readings": self.readings,
                "median_users_per_s": float(np.median(values)) if values else None}


def measure_catalog(n_items: int, factors: int = 64, batch: int = 64, seconds: float = 3.0, seed: int = 0,
                    naive: bool = True) -> dict:
    model, users, seen = _workload(n_items, factors, seed)
    item_factors = model.item_factors
    n_batches = POOL_USERS // batch
    batched = _batched_call(model, users, seen, batch)

    def single(i: int) -> None:
        u = i % POOL_USERS
        model.recommend_vectors(users[u:u + 1], K, seen=seen[u:u + 1])

    times, wall, cpu = _timed(batched, seconds)
    row = {"n_items": n_items, "factors": factors, "batch": batch, "k": K,
           "batched_users_per_s": len(times) * batch / wall, "batched_users_per_cpu_s": len(times) * batch / cpu,
           "batch_ms_p50": 1000 * float(np.median(times))}
    times, wall, cpu = _timed(single, seconds / 2)
    ms = np.asarray(times) * 1000
    row.update({"single_ms_p50": float(np.percentile(ms, 50)), "single_ms_p99": float(np.percentile(ms, 99)),
                "single_users_per_s": len(times) / wall})
    if naive:
        def naive_batch(i: int) -> None:
            lo = (i % n_batches) * batch
            naive_topk(users[lo:lo + batch], item_factors, K, seen[lo:lo + batch])

        times, wall, cpu = _timed(naive_batch, seconds / 2)
        row["naive_batched_users_per_s"] = len(times) * batch / wall
    return row


def blas_info() -> list[dict]:
    from threadpoolctl import threadpool_info

    return [{k: v for k, v in info.items() if k in ("internal_api", "version", "num_threads", "threading_layer")}
            for info in threadpool_info()]


def run(sizes: list[int], factors: int = 64, seconds: float = 3.0, log=print) -> list[dict]:
    rows = []
    for n in sizes:
        row = measure_catalog(n, factors, seconds=seconds)
        log(f"  core {n:>9,} items: {row['batched_users_per_s']:8,.0f} users/s batched "
            f"(naive {row.get('naive_batched_users_per_s', 0):,.0f}); single user p50 {row['single_ms_p50']:.2f} ms")
        rows.append(row)
    return rows
