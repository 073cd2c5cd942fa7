"""Ranking quality of a fitted model and of the popularity baseline on the same split."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from timbral.metrics import ranking_report
from timbral.nmf import NMFRecommender
from training.split import Split

DEFAULT_KS = (5, 10, 20)


@dataclass
class Evaluation:
    model: dict[str, float]  # e.g. {"ndcg_at_10": ...}
    baseline: dict[str, float]  # e.g. {"baseline_ndcg_at_10": ...}
    n_users: int
    ks: tuple[int, ...]


def evaluate(
    model: NMFRecommender,
    split: Split,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 512,
    max_users: int | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Recommend the top max(ks) unseen items to every test user (or a seeded sample of ``max_users``)."""
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    users = split.test_users
    if users.size == 0:
        raise ValueError("the split left no user with held-out items; use more data or a larger test fraction")
    if max_users is not None and users.size > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))
    n = ks[-1]
    model_recs = np.empty((users.size, n), dtype=np.int64)
    popular_recs = np.empty((users.size, n), dtype=np.int64)
    train_seen = split.train.matrix
    for start in range(0, users.size, batch_size):
        batch = users[start : start + batch_size]
        model_recs[start : start + batch.size] = model.recommend(batch, n, exclude_seen=True)[0]
        seen = [train_seen.indices[train_seen.indptr[u] : train_seen.indptr[u + 1]] for u in batch]
        popular_recs[start : start + batch.size] = model.recommend_popular(batch.size, n, seen=seen)[0]
        if progress is not None:
            progress(min(start + batch.size, users.size), users.size)
    relevant = split.relevant(users)
    n_items = split.train.n_items
    return Evaluation(
        model=ranking_report(model_recs, relevant, n_items, ks),
        baseline=ranking_report(popular_recs, relevant, n_items, ks, prefix="baseline_"),
        n_users=int(users.size),
        ks=ks,
    )
