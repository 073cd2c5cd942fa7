"""Per-user holdout: each user's latest fraction of items (temporal) or a seeded random fraction.

Users with a single interaction keep it in training (nothing can be learnt from them otherwise); every user with
at least two keeps at least one item for training and gives at least one to the test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from timbral.interactions import Interactions


@dataclass(frozen=True)
class Split:
    train: Interactions  # same users and items as the input (ids unchanged), held-out entries removed
    test: sp.csr_matrix  # the held-out entries (values as in the input)
    strategy: str  # "temporal" or "random"
    test_fraction: float

    def relevant(self, users: np.ndarray) -> list[np.ndarray]:
        return [self.test.indices[self.test.indptr[u] : self.test.indptr[u + 1]] for u in users]

    @property
    def test_users(self) -> np.ndarray:
        return np.flatnonzero(np.diff(self.test.indptr) > 0)


def split_per_user(data: Interactions, test_fraction: float = 0.2, seed: int = 42, temporal: bool | None = None) -> Split:
    """Hold out ``test_fraction`` of each user's items: the latest ones when timestamps exist, else random."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be within (0, 1), got {test_fraction}")
    use_time = data.timestamps is not None if temporal is None else temporal
    if use_time and data.timestamps is None:
        raise ValueError("a temporal split needs timestamps, and these interactions have none")
    matrix = data.matrix.tocsr()
    matrix.sort_indices()
    rng = np.random.default_rng(seed)
    indptr = matrix.indptr
    counts = np.diff(indptr)
    n_test = np.where(counts >= 2, np.maximum(1, np.floor(counts * test_fraction + 0.5)).astype(np.int64), 0)
    n_test = np.minimum(n_test, np.maximum(counts - 1, 0))

    # a key per entry whose order within each row decides what is held out (largest keys go to test)
    if use_time:
        ts = data.timestamps.tocsr()
        ts.sort_indices()
        key = ts.data.astype(np.float64)
        # break ties among equal times at random so the split is not biased by item order
        key = key + rng.random(key.size) * 1e-6
    else:
        key = rng.random(matrix.nnz)
    rows = np.repeat(np.arange(matrix.shape[0]), counts)
    order = np.lexsort((key, rows))  # by row, then key ascending
    rank_in_row = np.empty(matrix.nnz, dtype=np.int64)
    rank_in_row[order] = np.arange(matrix.nnz) - np.repeat(indptr[:-1], counts)
    is_test = rank_in_row >= (counts - n_test)[rows]

    def part(mask: np.ndarray) -> sp.csr_matrix:
        m = sp.csr_matrix((matrix.data[mask], (rows[mask], matrix.indices[mask])), shape=matrix.shape)
        m.sort_indices()
        return m

    train_ts = None
    if data.timestamps is not None:
        ts_all = data.timestamps.tocsr()
        ts_all.sort_indices()
        keep = ~is_test
        train_ts = sp.csr_matrix((ts_all.data[keep], (rows[keep], matrix.indices[keep])), shape=matrix.shape)
    train = Interactions(part(~is_test), data.users, data.items, train_ts)
    return Split(train=train, test=part(is_test), strategy="temporal" if use_time else "random", test_fraction=test_fraction)
