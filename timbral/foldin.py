"""Fold-in: factor rows for listening histories the model has never seen, item factors held fixed.

A new history gets the row the fit would have given that user: the same weighting of its values, the same
loss and the same penalties, solved against the fitted item factors with the row constrained non-negative.

* Frobenius loss: a non-negative least-squares solve per history. The regularised normal equations are
  factored once per model (Cholesky of ``HᵀH + l2·I``, see :func:`least_squares_system`), so each history
  costs one triangular solve and one small NNLS.
* Kullback–Leibler loss: the fit's multiplicative updates, run on the one row until it settles.
* Refined with listen confidences: the refinement's weighted problem, solved exactly per history.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.sparse as sp


def histories_matrix(item_indices: Sequence[Sequence[int]], values: Sequence[Sequence[float]] | None,
                     n_items: int) -> sp.csr_matrix:
    """Histories as a b × n_items matrix (repeated items summed); ``values`` default to 1 per listen.

    Refused with the history's position named: an item index outside ``0..n_items-1``, a count of values that
    differs from the count of items, a value that is negative, NaN or infinite.
    """
    b = len(item_indices)
    rows, cols, data = [], [], []
    for r, items in enumerate(item_indices):
        items = np.asarray(items, dtype=np.int64)
        if items.size and (items.min() < 0 or items.max() >= n_items):
            raise IndexError(f"history {r}: item index out of range 0..{n_items - 1}")
        vals = np.ones(items.size) if values is None else np.asarray(values[r], dtype=np.float64)
        if vals.size != items.size:
            raise ValueError(f"history {r}: {items.size} items but {vals.size} values")
        if vals.size and (not np.all(np.isfinite(vals)) or vals.min() < 0):
            raise ValueError(f"history {r}: values must be finite numbers >= 0")
        rows.append(np.full(items.size, r))
        cols.append(items)
        data.append(vals)
    X = sp.csr_matrix(
        (np.concatenate(data) if data else [], (np.concatenate(rows) if rows else [], np.concatenate(cols) if cols else [])),
        shape=(b, n_items),
        dtype=np.float64,
    )
    X.sum_duplicates()
    return X


def least_squares_system(item_factors: np.ndarray, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """``(A, L)`` with ``L`` the Cholesky factor of ``HᵀH + l2·I`` and ``A = Lᵀ``: min ‖A w − L⁻¹ t‖ over w ≥ 0
    is the regularised least-squares problem of a row whose right-hand side is ``t = x H``."""
    L = np.linalg.cholesky(regularised_gram(item_factors, l2))
    return L.T.copy(), L


def fold_in_least_squares(Xw: sp.csr_matrix, item_factors: np.ndarray, system: tuple[np.ndarray, np.ndarray],
                          l1: float) -> np.ndarray:
    """Rows (b × k, float32) for the weighted histories ``Xw`` under the Frobenius loss; an empty history → 0."""
    A, L = system
    targets = (Xw @ item_factors).astype(np.float64) - l1
    out = np.zeros((Xw.shape[0], item_factors.shape[1]), dtype=np.float32)
    for r in range(Xw.shape[0]):
        if Xw.indptr[r + 1] == Xw.indptr[r]:
            continue
        y = scipy.linalg.solve_triangular(L, targets[r], lower=True)
        out[r] = scipy.optimize.nnls(A, y)[0]
    return out


def fold_in_multiplicative(Xw: sp.csr_matrix, item_factors: np.ndarray, l1: float, l2: float,
                           max_iter: int = 2000, tol: float = 1e-7) -> np.ndarray:
    """Rows (b × k, float32) under the Kullback–Leibler loss: the fit's multiplicative updates on each row."""
    Ht = item_factors.astype(np.float64)  # items x k
    col_sums = Ht.sum(axis=0)
    out = np.zeros((Xw.shape[0], Ht.shape[1]), dtype=np.float32)
    for r in range(Xw.shape[0]):
        lo, hi = Xw.indptr[r], Xw.indptr[r + 1]
        if lo == hi:
            continue
        sub, x = Ht[Xw.indices[lo:hi]], Xw.data[lo:hi].astype(np.float64)
        w = np.full(Ht.shape[1], max(x.mean() / max(col_sums.mean(), 1e-12), 1e-6))
        for _ in range(max_iter):
            wh = np.maximum(sub @ w, 1e-12)
            new = w * (sub.T @ (x / wh)) / np.maximum(col_sums + l1 + l2 * w, 1e-12)
            done = np.abs(new - w).max() <= tol * max(np.abs(w).max(), 1e-12)
            w = new
            if done:
                break
        out[r] = w
    return out


def regularised_gram(item_factors: np.ndarray, reg: float) -> np.ndarray:
    """``HᵀH + reg·I`` in float64: the Frobenius fold-in's whole Gram, and for a refined model the part of every
    history's Gram that the zeros and the penalty give (once per model)."""
    H = item_factors.astype(np.float64)
    base = H.T @ H
    base[np.diag_indices_from(base)] += float(reg) + 1e-9 * max(np.trace(base), 1.0)  # a tiny ridge: definite
    return base


def confidence_system(item_factors: np.ndarray, reg: float, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """What every history of a refined model shares, computed once per model: ``(base, offset)``, the zeros' and
    the penalty's part of each Gram (:func:`regularised_gram`) and the zeros' part of each right-hand side,
    ``shift·Σ_i h_i``."""
    return regularised_gram(item_factors, reg), float(shift) * item_factors.astype(np.float64).sum(axis=0)


def fold_in_confidence(Xw: sp.csr_matrix, extra: np.ndarray, item_factors: np.ndarray,
                       system: tuple[np.ndarray, np.ndarray], shift: float) -> np.ndarray:
    """Rows (b × k, float32) for a model refined with listen confidences (``timbral.confidence``): per history,
    the exact non-negative solve of the refinement's user problem, min Σ c_i (x_i + shift − r·h_i)² + reg·|r|²
    over every item (``c_i = 1 + extra`` on the history's listens, 1 elsewhere). ``system`` is
    :func:`confidence_system`'s; each history adds its own listens to the shared Gram and gets its own Cholesky
    factor. An empty history gets a zero row, as with the other solvers."""
    base, offset = system
    out = np.zeros((Xw.shape[0], item_factors.shape[1]), dtype=np.float32)
    extra = np.asarray(extra, dtype=np.float64)
    shift = float(shift)
    for r in range(Xw.shape[0]):
        lo, hi = Xw.indptr[r], Xw.indptr[r + 1]
        if lo == hi:
            continue
        Hs = item_factors[Xw.indices[lo:hi]].astype(np.float64)  # only the history's items
        gram = base + (Hs * extra[lo:hi, None]).T @ Hs
        target = ((1.0 + extra[lo:hi]) * Xw.data[lo:hi] + extra[lo:hi] * shift) @ Hs + offset
        L = np.linalg.cholesky(gram)
        out[r] = scipy.optimize.nnls(L.T, scipy.linalg.solve_triangular(L, target, lower=True))[0]
    return out
