"""The fused product + top-k (``timbral.topk.topk_dot``) that the benchmark measures is exact.

Factors with small integer entries make every product exact in float32, so the reference (a stable argsort of
each whole row of ``queries @ targets.T`` with the excluded entries at -inf) must match bit for bit, ties
included.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.unit.test_topk import reference_topk
from timbral import topk as topk_module
from timbral.topk import topk_dot


def masked_reference(queries, targets, k, exclude=None):
    scores = (queries.astype(np.float64) @ targets.astype(np.float64).T).astype(np.float32)
    for r, cols in enumerate(exclude or []):
        cols = np.asarray(cols, dtype=np.int64)
        scores[r, cols[(cols >= 0) & (cols < scores.shape[1])]] = -np.inf
    return reference_topk(scores, k)


def integer_factors(rng, rows, f, high):
    return rng.integers(0, high, size=(rows, f)).astype(np.float32)


@pytest.mark.parametrize(("b", "n", "k", "high"), [
    (1, 5000, 10, 6), (7, 20_000, 10, 6), (64, 30_000, 25, 3), (3, 9000, 200, 2), (5, 4096, 1, 50),
    (4, 3000, 10, 5),  # below the sampled path: full product
])
def test_matches_brute_force_with_masks_and_ties(b, n, k, high):
    rng = np.random.default_rng(b * 1000 + n + k)
    queries, targets = integer_factors(rng, b, 8, high), integer_factors(rng, n, 8, high)
    exclude = [rng.choice(n, size=int(rng.integers(0, 300)), replace=False).tolist() + [-1, n + 5] for _ in range(b)]
    got = topk_dot(queries, targets, k, exclude=exclude, block_rows=777)
    want = masked_reference(queries, targets, k, exclude)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_rows_whose_best_items_are_all_excluded_fall_back_and_stay_exact():
    rng = np.random.default_rng(3)
    n, k = 20_000, 10
    queries, targets = integer_factors(rng, 3, 4, 9), integer_factors(rng, n, 4, 9)
    scores = queries @ targets.T
    exclude = [np.argsort(-scores[r], kind="stable")[:2000].tolist() for r in range(3)]  # the whole head
    exclude[1] = list(range(0, n, 2))  # every sampled column of an even step
    got = topk_dot(queries, targets, k, exclude=exclude)
    want = masked_reference(queries, targets, k, exclude)
    np.testing.assert_array_equal(got[0], want[0])


def test_everything_excluded_pads_and_k_beyond_catalog():
    rng = np.random.default_rng(4)
    queries, targets = integer_factors(rng, 2, 4, 5), integer_factors(rng, 6000, 4, 5)
    idx, val = topk_dot(queries, targets, 5, exclude=[list(range(6000)), []])
    assert (idx[0] == -1).all() and np.isneginf(val[0]).all()
    np.testing.assert_array_equal(idx[1], masked_reference(queries, targets, 5)[0][1])
    idx, _ = topk_dot(queries[:1], targets[:7], 9)
    assert idx[0, 7:].tolist() == [-1, -1]


def test_float_scores_agree_with_topk_of_the_full_product():
    rng = np.random.default_rng(5)
    queries = rng.random((16, 32), dtype=np.float32)
    targets = rng.random((50_000, 32), dtype=np.float32)
    got_idx, got_val = topk_dot(queries, targets, 10)
    want_idx, want_val = topk_module.topk(queries @ targets.T, 10)
    np.testing.assert_allclose(got_val, want_val, rtol=1e-5)
    assert (got_idx == want_idx).mean() > 0.99  # float rounding may swap near-ties, nothing more


def test_mask_list_length_is_checked():
    with pytest.raises(ValueError, match="one entry per row"):
        topk_dot(np.ones((2, 3), np.float32), np.ones((5000, 3), np.float32), 3, exclude=[[1]])
