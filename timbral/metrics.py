"""Ranking metrics at k, as pure functions over recommended indices and relevant sets.

``recommended`` is a 2-D integer array (users × ≥k), best first, padded with -1; ``relevant`` holds, per row,
the held-out items of that user. Users with no relevant item are left out of the mean (they cannot be
scored), which is the usual convention (e.g. in the Microsoft recommenders evaluation module).

Definitions, for one user with relevant set R and top-k list L:
- precision@k = |L ∩ R| / k
- recall@k = |L ∩ R| / |R|
- hit rate@k = 1 if |L ∩ R| > 0 else 0
- nDCG@k = DCG(L) / IDCG, DCG = Σ_i rel_i / log2(i + 2) over positions i = 0..k-1, binary relevance,
  IDCG the DCG of min(|R|, k) hits at the top
- AP@k = (1 / min(|R|, k)) Σ_i precision@(i+1) · rel_i; MAP@k is its mean
- catalog coverage@k = distinct items recommended across all users / catalog size (not averaged per user)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _hits(recommended: np.ndarray, relevant: Sequence, k: int) -> tuple[np.ndarray, np.ndarray]:
    rec = np.asarray(recommended)
    if rec.ndim != 2:
        raise ValueError(f"recommended must be 2-D (users x ranks), got shape {rec.shape}")
    if len(relevant) != rec.shape[0]:
        raise ValueError(f"relevant has {len(relevant)} rows, recommended has {rec.shape[0]}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    top = rec[:, :k]
    hits = np.zeros(top.shape, dtype=bool)
    n_rel = np.zeros(rec.shape[0], dtype=np.int64)
    for r, rel in enumerate(relevant):
        if isinstance(rel, (set, frozenset)):  # the docstring's "relevant sets": np.asarray cannot take a set
            rel = list(rel)
        rel = np.unique(np.asarray(rel, dtype=np.int64))
        n_rel[r] = rel.size
        if rel.size:
            hits[r] = np.isin(top[r], rel) & (top[r] >= 0)
    if hits.shape[1] < k:  # fewer than k columns: the missing ranks are misses
        hits = np.pad(hits, ((0, 0), (0, k - hits.shape[1])))
    return hits, n_rel


def _mean_over_scored(values: np.ndarray, n_rel: np.ndarray) -> float:
    scored = n_rel > 0
    return float(values[scored].mean()) if scored.any() else 0.0


def precision_at_k(recommended, relevant, k: int) -> float:
    hits, n_rel = _hits(recommended, relevant, k)
    return _mean_over_scored(hits.sum(axis=1) / k, n_rel)


def recall_at_k(recommended, relevant, k: int) -> float:
    hits, n_rel = _hits(recommended, relevant, k)
    return _mean_over_scored(hits.sum(axis=1) / np.maximum(n_rel, 1), n_rel)


def hit_rate_at_k(recommended, relevant, k: int) -> float:
    hits, n_rel = _hits(recommended, relevant, k)
    return _mean_over_scored(hits.any(axis=1).astype(float), n_rel)


def ndcg_at_k(recommended, relevant, k: int) -> float:
    hits, n_rel = _hits(recommended, relevant, k)
    discounts = 1.0 / np.log2(np.arange(k) + 2.0)
    dcg = (hits * discounts).sum(axis=1)
    ideal_counts = np.minimum(n_rel, k)
    idcg = np.concatenate([[0.0], np.cumsum(discounts)])[ideal_counts]
    return _mean_over_scored(dcg / np.where(idcg > 0, idcg, 1.0), n_rel)


def map_at_k(recommended, relevant, k: int) -> float:
    hits, n_rel = _hits(recommended, relevant, k)
    precision_at_rank = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    ap = (precision_at_rank * hits).sum(axis=1) / np.maximum(np.minimum(n_rel, k), 1)
    return _mean_over_scored(ap, n_rel)


def catalog_coverage_at_k(recommended, n_items: int, k: int) -> float:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n_items < 1:
        raise ValueError("n_items must be >= 1")
    rec = np.asarray(recommended)
    if rec.ndim != 2:
        raise ValueError(f"recommended must be 2-D (users x ranks), got shape {rec.shape}")
    rec = rec[:, :k]
    distinct = np.unique(rec[rec >= 0])
    return float(distinct.size / n_items)


RANKING_METRICS = {
    "precision": precision_at_k,
    "recall": recall_at_k,
    "ndcg": ndcg_at_k,
    "map": map_at_k,
    "hit_rate": hit_rate_at_k,
}


def ranking_report(recommended, relevant, n_items: int, ks: Sequence[int] = (5, 10, 20), prefix: str = "") -> dict[str, float]:
    """All metrics for every k, named like ``ndcg_at_10`` (with an optional prefix such as ``baseline_``)."""
    out: dict[str, float] = {}
    for k in ks:
        for name, fn in RANKING_METRICS.items():
            out[f"{prefix}{name}_at_{k}"] = fn(recommended, relevant, k)
        out[f"{prefix}coverage_at_{k}"] = catalog_coverage_at_k(recommended, n_items, k)
    return out
