"""The confidence-weighted refinement's solver against direct solutions of the same problems."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse as sp

from timbral.confidence import (
    auto_reg,
    item_major,
    listen_confidence,
    refine,
    solve_rows,
    solve_rows_with_loss,
    weighted_loss,
)


def _problem(seed: int = 0, n: int = 12, m: int = 30, k: int = 4, density: float = 0.2):
    rng = np.random.default_rng(seed)
    X = sp.random(n, m, density=density, random_state=seed, format="csr", dtype=np.float32)
    X.data = rng.integers(1, 4, X.nnz).astype(np.float32)
    X = X.tolil()
    X[0] = 0  # an empty row
    X = X.tocsr()
    X.eliminate_zeros()
    extra = rng.uniform(0.0, 5.0, X.nnz).astype(np.float32)
    F = rng.uniform(0.0, 1.0, (m, k)).astype(np.float32)
    return X, extra, F


def _direct(X, extra, F, reg, shift=0.0):
    """Each row by scipy's NNLS on the stacked problem [√c·F; √reg·I] r ≈ [√c·(x + shift); 0]."""
    n, m = X.shape
    k = F.shape[1]
    C = np.ones((n, m))
    dense = X.toarray().astype(np.float64)
    rows = np.repeat(np.arange(n), np.diff(X.indptr))
    C[rows, X.indices] = 1.0 + extra
    out = np.zeros((n, k))
    for u in range(n):
        w = np.sqrt(C[u])
        A = np.vstack([w[:, None] * F, np.sqrt(reg) * np.eye(k)])
        y = np.concatenate([w * (dense[u] + shift), np.zeros(k)])
        out[u] = scipy.optimize.nnls(A, y)[0]
    return out


@pytest.mark.parametrize("shift", [0.0, 0.4])
@pytest.mark.parametrize("reg", [0.0, 0.3, 4.0])
def test_each_row_is_the_non_negative_least_squares_solution(reg, shift):
    X, extra, F = _problem()
    got = solve_rows(X, extra, F, reg, sweeps=5000, tol=1e-9, shift=shift)
    want = _direct(X, extra, F, reg, shift)
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=2e-3)
    assert (got >= 0).all()
    # the empty row: zero without a shift; with one, the row that fits every cell at the shift
    assert not got[0].any() if shift == 0 else got[0].any()


def test_rows_of_every_length_are_solved_in_their_batches():
    # rows with 0..29 listens land in different batches (and a tiny budget splits batches further)
    X, extra, F = _problem(seed=1, n=40, density=0.35)
    whole = solve_rows(X, extra, F, 0.5, sweeps=3000, tol=1e-9)
    split = solve_rows(X, extra, F, 0.5, sweeps=3000, tol=1e-9, budget=7)
    np.testing.assert_allclose(split, whole, atol=1e-5)
    np.testing.assert_allclose(whole, _direct(X, extra, F, 0.5), atol=2e-4, rtol=2e-3)


def test_the_confidence_is_part_of_the_answer():
    X, extra, F = _problem(seed=2)
    weighted = solve_rows(X, extra, F, 0.5, sweeps=3000, tol=1e-9)
    flat = solve_rows(X, np.zeros_like(extra), F, 0.5, sweeps=3000, tol=1e-9)
    assert np.abs(weighted - flat).max() > 1e-2


def test_refine_lowers_the_loss_every_sweep_and_keeps_entries_in_step_with_their_confidence():
    X, extra, _ = _problem(seed=3, n=25, m=18, density=0.3)
    rng = np.random.default_rng(3)
    W0 = rng.uniform(0, 1, (25, 3)).astype(np.float32)
    H0 = rng.uniform(0, 1, (18, 3)).astype(np.float32)
    for shift in (0.0, 0.3):
        start = weighted_loss(X, extra, W0, H0, 0.5, shift)
        W, H, losses = refine(X, extra, W0, H0, 0.5, sweeps=6, shift=shift)
        values = [loss for _, loss in losses]
        assert values[0] < start and all(b <= a * (1 + 1e-6) for a, b in zip(values, values[1:], strict=False))
        # the closing user pass: every user row is the exact solution against the final item factors (fold-in's)
        np.testing.assert_allclose(W, _direct(X, extra, H, 0.5, shift), atol=1e-3, rtol=1e-2)


def test_the_item_major_copy_keeps_each_entrys_value_and_confidence():
    X, extra, _ = _problem(seed=4)
    Xt, extra_t = item_major(X, extra)
    assert (Xt != X.T).nnz == 0
    conf = sp.csr_matrix((extra, X.indices, X.indptr), shape=X.shape).toarray()
    rows = np.repeat(np.arange(Xt.shape[0]), np.diff(Xt.indptr))
    np.testing.assert_array_equal(extra_t, conf.T[rows, Xt.indices])


def test_listen_confidence_follows_the_stored_entries():
    X = sp.csr_matrix(np.array([[0, 2, 1], [5, 0, 0]], dtype=np.float32))
    idf = np.array([0.5, 1.0, 2.0], dtype=np.float32)
    np.testing.assert_allclose(listen_confidence(X, idf, 3.0), [3.0, 6.0, 1.5])


def test_auto_reg_grows_with_the_square_root_of_the_users():
    assert auto_reg(100) == pytest.approx(7.0) and auto_reg(10_000) == pytest.approx(70.0)


@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_the_loss_a_solve_reports_is_the_objective(shift):
    X, extra, F = _problem(seed=5)
    rows, loss = solve_rows_with_loss(X, extra, F, 0.7, sweeps=50, shift=shift)
    want = weighted_loss(X, extra, rows, F, 0.7, shift)
    assert loss + 0.7 * float(np.sum(F.astype(np.float64) ** 2)) == pytest.approx(want, rel=1e-5)


def test_the_oracle_loss_counts_every_cell_at_its_shifted_target():
    X, extra, F = _problem(seed=7, n=6, m=9)
    rng = np.random.default_rng(7)
    W = rng.uniform(0, 1, (6, 4))
    C = np.ones(X.shape)
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    C[rows, X.indices] = 1.0 + extra
    dense = (C * (X.toarray() + 0.3 - W @ F.T) ** 2).sum() + 0.5 * ((W**2).sum() + (F.astype(np.float64) ** 2).sum())
    assert weighted_loss(X, extra, W, F, 0.5, 0.3) == pytest.approx(dense, rel=1e-6)


def test_a_dead_component_without_a_penalty_stays_zero_and_finite():
    X, extra, F = _problem(seed=6)
    F[:, 2] = 0.0  # a component no item uses
    rows = solve_rows(X, extra, F, 0.0, sweeps=200)
    assert np.isfinite(rows).all() and not rows[:, 2].any()
