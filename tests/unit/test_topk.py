"""topk against a brute-force reference: a stable argsort of each row, -inf (and NaN) never returned."""

from __future__ import annotations

import numpy as np
import pytest

from timbral import topk as topk_module
from timbral.topk import topk


def reference_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: a stable argsort of each whole row by descending value (so ties go to the lower index),
    then -inf (and NaN) dropped, then padding."""
    n_rows = scores.shape[0]
    idx = np.full((n_rows, k), -1, dtype=np.int64)
    val = np.full((n_rows, k), -np.inf, dtype=np.float32)
    for r in range(n_rows):
        row = scores[r].astype(np.float64)  # every test's integers are small, so exact in float64
        row[np.isnan(row)] = -np.inf
        order = np.argsort(-row, kind="stable")
        order = order[row[order] > -np.inf][:k]
        idx[r, : order.size] = order
        val[r, : order.size] = scores[r, order]
    return idx, val


def assert_matches_reference(scores: np.ndarray, k: int, **kwargs) -> None:
    got_idx, got_val = topk(scores, k, **kwargs)
    want_idx, want_val = reference_topk(scores, k)
    assert got_idx.shape == (scores.shape[0], k)
    assert got_val.shape == (scores.shape[0], k)
    assert got_idx.dtype == np.int64
    assert got_val.dtype == np.float32
    np.testing.assert_array_equal(got_idx, want_idx)
    np.testing.assert_array_equal(got_val, want_val)


def sampled_path_runs(n_cols: int, k: int) -> bool:
    return n_cols >= topk_module._SAMPLE_MIN_COLUMNS and min(k, n_cols) * 4.0 * 4 < n_cols


@pytest.mark.parametrize(
    ("n_rows", "n_cols", "k"),
    [
        (1, 1, 1),
        (3, 1, 5),
        (4, 7, 1),
        (4, 7, 6),
        (4, 7, 7),
        (4, 7, 8),
        (5, 100, 10),
        (5, 100, 99),
        (2, 4095, 10),
        (3, 4096, 1),
        (3, 4096, 63),
        (3, 4096, 64),  # 64 * 16 = 1024 < 4096: still sampled; k near the sample's reach
        (3, 4096, 300),  # too large for the sampled path: exact path
        (2, 5000, 4999),
        (2, 20_000, 100),
        (2, 20_000, 1249),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_brute_force_on_random_rows(n_rows, n_cols, k, dtype):
    rng = np.random.default_rng(n_rows * 100_003 + n_cols * 7 + k)
    scores = rng.standard_normal((n_rows, n_cols)).astype(dtype)
    assert_matches_reference(scores, k)


def test_the_sampled_path_is_really_exercised(monkeypatch):
    """Guard for the tests above: the shapes meant to run the sampled threshold do run it."""
    calls = []
    original = topk_module._sampled_thresholds

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(topk_module, "_sampled_thresholds", spy)
    rng = np.random.default_rng(0)
    assert sampled_path_runs(4096, 10)
    topk(rng.random((2, 4096)), 10)
    assert calls == [(2, 4096)]
    assert not sampled_path_runs(4095, 10)
    topk(rng.random((2, 4095)), 10)
    assert len(calls) == 1


def test_k_larger_than_columns_pads_with_minus_one_and_minus_inf():
    scores = np.array([[0.5, 2.0, 1.0]], dtype=np.float32)
    idx, val = topk(scores, 5)
    np.testing.assert_array_equal(idx, [[1, 2, 0, -1, -1]])
    np.testing.assert_array_equal(val, np.array([[2.0, 1.0, 0.5, -np.inf, -np.inf]], dtype=np.float32))


def test_minus_inf_is_never_returned():
    scores = np.array(
        [
            [-np.inf, 3.0, -np.inf, 1.0],
            [-np.inf, -np.inf, -np.inf, -np.inf],
            [0.0, -np.inf, -1.0, -np.inf],
        ]
    )
    idx, val = topk(scores, 3)
    np.testing.assert_array_equal(idx, [[1, 3, -1], [-1, -1, -1], [0, 2, -1]])
    np.testing.assert_array_equal(val[:, 2], [-np.inf] * 3)
    np.testing.assert_array_equal(val[0, :2], [3.0, 1.0])


@pytest.mark.parametrize("n_cols", [50, 4096, 10_000])
def test_rows_full_of_minus_inf_and_mostly_minus_inf(n_cols):
    rng = np.random.default_rng(n_cols)
    scores = np.full((4, n_cols), -np.inf, dtype=np.float32)
    scores[1, rng.choice(n_cols, size=3, replace=False)] = rng.random(3)  # fewer finite entries than k
    scores[2, : n_cols // 2] = rng.random(n_cols // 2)
    scores[3, ::7] = 1.0  # many tied finite entries among -inf
    assert_matches_reference(scores, 10)
    idx, _ = topk(scores, 10)
    assert (idx[0] == -1).all()
    assert (idx[1, :3] >= 0).all() and (idx[1, 3:] == -1).all()


def test_plus_inf_is_returned_first():
    scores = np.array([[1.0, np.inf, 2.0, np.inf]])
    idx, val = topk(scores, 3)
    np.testing.assert_array_equal(idx, [[1, 3, 2]])
    np.testing.assert_array_equal(val, np.array([[np.inf, np.inf, 2.0]], dtype=np.float32))


def test_nan_is_treated_like_minus_inf():
    scores = np.array([[np.nan, 1.0, 2.0, np.nan], [np.nan, np.nan, np.nan, np.nan]])
    idx, _ = topk(scores, 3)
    np.testing.assert_array_equal(idx, [[2, 1, -1], [-1, -1, -1]])


def test_ties_broken_by_lower_index_small():
    scores = np.array([[1.0, 3.0, 3.0, 1.0, 3.0, 1.0]])
    idx, _ = topk(scores, 4)
    # three 3.0s (1, 2, 4) in index order, then the lowest-index 1.0 (0)
    np.testing.assert_array_equal(idx, [[1, 2, 4, 0]])


@pytest.mark.parametrize("n_cols", [30, 700, 4096, 12_000])
@pytest.mark.parametrize("k", [1, 5, 17, 200])
def test_heavy_duplicates_tie_break_at_the_k_boundary(n_cols, k):
    """Few distinct values, so a tie nearly always straddles position k: the lowest indices must win."""
    rng = np.random.default_rng(n_cols + k)
    scores = rng.integers(0, 4, size=(6, n_cols)).astype(np.float32)
    scores[5] = 7.0  # a row that is one big tie
    assert_matches_reference(scores, k)
    idx, _ = topk(scores, k)
    np.testing.assert_array_equal(idx[5, : min(k, n_cols)], np.arange(min(k, n_cols)))
    assert (idx[5, n_cols:] == -1).all()


@pytest.mark.parametrize("k", [1, 10, 60])
def test_top_values_all_between_sample_positions(k):
    """The strided sample reads columns 0, step, 2*step...; put every large value off those columns."""
    n_cols = 8192
    step = max(1, n_cols // 2048)
    assert step > 1 and sampled_path_runs(n_cols, k)
    rng = np.random.default_rng(k)
    scores = rng.random((3, n_cols)).astype(np.float32)  # in [0, 1)
    off_sample = np.flatnonzero(np.arange(n_cols) % step != 0)
    for r in range(3):
        chosen = rng.choice(off_sample, size=2 * k, replace=False)
        scores[r, chosen] = 10.0 + rng.random(2 * k)
    scores[2, off_sample[:k]] = 50.0  # and ties among them
    assert_matches_reference(scores, k)
    idx, _ = topk(scores, k)
    assert np.all(idx % step != 0)


def test_sample_holds_only_the_largest_values_forcing_the_exact_fallback():
    """When k exceeds what the sampled threshold keeps (j < k), the row must fall back to the exact path."""
    n_cols, k = 20_000, 100
    step = n_cols // 2048
    scores = np.zeros((2, n_cols), dtype=np.float64)
    on_sample = np.arange(0, n_cols, step)
    scores[0, on_sample[:40]] = 100.0 + np.arange(40)  # only 40 values above the rest, all sampled
    scores[0, ~np.isin(np.arange(n_cols), on_sample[:40])] = np.linspace(0, 1, n_cols - 40)
    scores[1, on_sample] = 5.0  # every sampled value is the row maximum: a huge tie
    scores[1, 1] = 4.0
    exact_rows = []
    original = topk_module._select_row

    def spy(row, cand, *args):
        exact_rows.append(cand is None)
        return original(row, cand, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(topk_module, "_select_row", spy)
        assert_matches_reference(scores, k)
    assert exact_rows == [True, False]  # row 0 fell back, row 1 stayed on the candidates


def test_sampled_path_with_a_threshold_ties_many_entries():
    n_cols = 4096
    scores = np.zeros((1, n_cols))
    scores[0, -3:] = [3.0, 2.0, 1.0]  # three winners at the very end, the rest one big tie
    idx, val = topk(scores, 6)
    np.testing.assert_array_equal(idx, [[4095 - 2, 4095 - 1, 4095, 0, 1, 2]])
    np.testing.assert_array_equal(val, [[3.0, 2.0, 1.0, 0.0, 0.0, 0.0]])


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.uint32])
def test_integer_scores_including_unsigned(dtype):
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 50, size=(4, 300)).astype(dtype)
    assert_matches_reference(scores, 12)


def test_does_not_modify_its_input():
    rng = np.random.default_rng(2)
    scores = rng.random((3, 5000))
    scores[0, 3] = np.nan
    before = scores.copy()
    topk(scores, 10)
    np.testing.assert_array_equal(scores, before)


def test_empty_shapes():
    idx, val = topk(np.zeros((0, 5)), 3)
    assert idx.shape == (0, 3) and val.shape == (0, 3)
    idx, val = topk(np.zeros((2, 0)), 3)
    np.testing.assert_array_equal(idx, np.full((2, 3), -1))
    assert np.isneginf(val).all()


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()])
def test_rejects_scores_that_are_not_2d(shape):
    with pytest.raises(ValueError, match="2-D"):
        topk(np.zeros(shape), 1)


@pytest.mark.parametrize("k", [0, -1])
def test_rejects_k_below_one(k):
    with pytest.raises(ValueError, match="k must be >= 1"):
        topk(np.zeros((2, 3)), k)


def test_random_shapes_fuzz():
    rng = np.random.default_rng(12345)
    for _ in range(60):
        n_rows = int(rng.integers(1, 4))
        n_cols = int(rng.choice([1, 2, 9, 64, 511, 4096, 4500, 9000]))
        k = int(rng.integers(1, n_cols + 3))
        if rng.random() < 0.5:
            scores = rng.standard_normal((n_rows, n_cols))
        else:
            scores = rng.integers(-2, 3, size=(n_rows, n_cols)).astype(np.float32)
        scores[rng.random(scores.shape) < 0.1] = -np.inf
        assert_matches_reference(scores, k)
