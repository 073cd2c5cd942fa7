"""Batched top-k selection: the hot path of every recommendation.

``np.argpartition`` over a whole score row costs O(n_items) with a large constant; for big catalogs it, not
the matrix product, dominates. ``topk`` first estimates, from a strided sample of each row, a threshold that
roughly ``oversample * k`` scores exceed, keeps only those candidates, and runs the exact partial sort on them.
Rows where the estimate keeps fewer than ``k`` candidates fall back to the exact full-row path, so the answer
is always exact.
"""

from __future__ import annotations

import numpy as np

# Below this many columns the sampled threshold buys nothing.
_SAMPLE_MIN_COLUMNS = 4096


def topk(scores: np.ndarray, k: int, *, oversample: float = 4.0, sample_size: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(indices, values)`` of the ``k`` largest entries of each row, best first.

    ``scores`` is 2-D (batch × items). Entries equal to ``-inf`` are never returned: rows with fewer than
    ``k`` finite entries are padded with index ``-1`` and value ``-inf``. Ties are broken by lower index.
    NaN is treated like ``-inf`` (never returned).
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (batch x items), got shape {scores.shape}")
    n_rows, n_cols = scores.shape
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    kk = min(k, n_cols)
    out_idx = np.full((n_rows, k), -1, dtype=np.int64)
    out_val = np.full((n_rows, k), -np.inf, dtype=np.float32)
    if n_rows == 0 or n_cols == 0:
        return out_idx, out_val

    if n_cols >= _SAMPLE_MIN_COLUMNS and kk * oversample * 4 < n_cols:
        thresholds = _sampled_thresholds(scores, kk, oversample, sample_size)
        for r in range(n_rows):
            row = scores[r]
            cand = np.flatnonzero(row >= thresholds[r])
            if cand.size < kk:
                cand = None
            _select_row(row, cand, kk, out_idx[r], out_val[r])
    else:
        for r in range(n_rows):
            _select_row(scores[r], None, kk, out_idx[r], out_val[r])
    return out_idx, out_val


def _sampled_thresholds(scores: np.ndarray, k: int, oversample: float, sample_size: int) -> np.ndarray:
    n_cols = scores.shape[1]
    step = max(1, n_cols // sample_size)
    sample = scores[:, ::step]
    s = sample.shape[1]
    # In a sample of s out of n_cols, the j-th largest sampled value is exceeded by about j * n_cols / s
    # entries of the full row. Aim for oversample * k of them.
    j = int(np.clip(np.ceil(oversample * k * s / n_cols), 1, s))
    part = np.partition(sample, s - j, axis=1)
    return part[:, s - j]


def _select_row(row: np.ndarray, cand: np.ndarray | None, k: int, idx_out: np.ndarray, val_out: np.ndarray) -> None:
    values = row if cand is None else row[cand]
    if values.dtype.kind == "f" and np.isnan(values).any():
        values = np.where(np.isnan(values), -np.inf, values)  # NaN ranks last and is never returned
    m = values.size
    if k < m:
        # The k-th largest value; everything above it is in, and of the entries equal to it only the lowest
        # indices (argpartition alone would pick an arbitrary subset of a tie straddling position k).
        # No negation, so unsigned integer scores work too.
        kth = np.partition(values, m - k)[m - k]
        above = np.flatnonzero(values > kth)
        local = np.concatenate([above, np.flatnonzero(values == kth)[: k - above.size]])
    else:
        local = np.arange(m)
    top = local if cand is None else cand[local]
    top_vals = values[local]
    # best first, ties by lower index: a stable ascending sort by value of the entries taken in descending index
    # order, then reversed (no negation, which would wrap unsigned integers)
    by_index_desc = np.argsort(top)[::-1]
    order = by_index_desc[np.argsort(top_vals[by_index_desc], kind="stable")][::-1]
    top = top[order]
    top_vals = top_vals[order]
    finite = top_vals > -np.inf
    n = int(finite.sum())
    idx_out[:n] = top[finite]
    val_out[:n] = top_vals[finite]
