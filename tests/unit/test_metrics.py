"""Ranking metrics on cases small enough to check by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from timbral.metrics import (
    catalog_coverage_at_k,
    hit_rate_at_k,
    map_at_k,
    ndcg_at_k,
    precision_at_k,
    ranking_report,
    recall_at_k,
)

LOG2_3 = math.log2(3)  # discount of rank 2 is 1/log2(3)
LOG2_5 = math.log2(5)  # discount of rank 4 is 1/log2(5)

# One user: relevant {1, 5, 8}; list 3, 1, 7, 5, 9 -> hits at ranks 2 and 4.
ONE_REC = np.array([[3, 1, 7, 5, 9]])
ONE_REL = [[1, 5, 8]]


def test_single_user_at_5_by_hand():
    # precision = 2 hits / 5 = 0.4
    assert precision_at_k(ONE_REC, ONE_REL, 5) == pytest.approx(0.4)
    # recall = 2 hits / 3 relevant
    assert recall_at_k(ONE_REC, ONE_REL, 5) == pytest.approx(2 / 3)
    assert hit_rate_at_k(ONE_REC, ONE_REL, 5) == 1.0
    # DCG = 1/log2(3) + 1/log2(5); IDCG = 3 hits at the top = 1 + 1/log2(3) + 1/2
    dcg = 1 / LOG2_3 + 1 / LOG2_5
    idcg = 1 + 1 / LOG2_3 + 0.5
    assert ndcg_at_k(ONE_REC, ONE_REL, 5) == pytest.approx(dcg / idcg)  # = 0.49819...
    assert ndcg_at_k(ONE_REC, ONE_REL, 5) == pytest.approx(0.498190, abs=1e-6)
    # AP = (P@2 + P@4) / min(3, 5) = (1/2 + 2/4) / 3 = 1/3
    assert map_at_k(ONE_REC, ONE_REL, 5) == pytest.approx(1 / 3)


def test_single_user_at_2_cuts_the_list():
    # top-2 = 3, 1 -> one hit at rank 2
    assert precision_at_k(ONE_REC, ONE_REL, 2) == pytest.approx(0.5)  # 1 / 2
    assert recall_at_k(ONE_REC, ONE_REL, 2) == pytest.approx(1 / 3)  # 1 / 3
    # DCG = 1/log2(3); IDCG with min(3, 2) = 2 hits = 1 + 1/log2(3)
    assert ndcg_at_k(ONE_REC, ONE_REL, 2) == pytest.approx((1 / LOG2_3) / (1 + 1 / LOG2_3))
    # AP = P@2 / min(3, 2) = (1/2) / 2
    assert map_at_k(ONE_REC, ONE_REL, 2) == pytest.approx(0.25)
    # top-1 = 3: a miss
    assert hit_rate_at_k(ONE_REC, ONE_REL, 1) == 0.0


def test_perfect_ranking_scores_one():
    rec = np.array([[4, 2, 9]])
    rel = [[2, 4]]
    assert ndcg_at_k(rec, rel, 3) == pytest.approx(1.0)
    assert map_at_k(rec, rel, 3) == pytest.approx(1.0)  # (1/1 + 2/2) / 2
    assert recall_at_k(rec, rel, 3) == pytest.approx(1.0)
    assert precision_at_k(rec, rel, 3) == pytest.approx(2 / 3)


def test_more_relevant_items_than_k_ideal_dcg_uses_min_r_k():
    rec = np.array([[1, 2, 7]])
    rel = [[1, 2, 3, 4]]
    # top-2 both relevant: IDCG over min(4, 2) = 2 hits equals DCG -> 1
    assert ndcg_at_k(rec, rel, 2) == pytest.approx(1.0)
    # AP = (1/1 + 2/2) / min(4, 2) = 1
    assert map_at_k(rec, rel, 2) == pytest.approx(1.0)
    assert recall_at_k(rec, rel, 2) == pytest.approx(0.5)  # 2 / 4


# Four users; user 2 has no relevant items and must not count.
MULTI_REC = np.array(
    [
        [3, 1, 7, 5, 9],  # relevant {1, 5, 8}: hits at ranks 2, 4 (as above)
        [2, 4, -1, -1, -1],  # relevant {4}: hit at rank 2, then padding
        [4, 1, 5, 8, 3],  # no relevant items: excluded
        [6, 8, 0, 2, 11],  # relevant {10}: no hit
    ]
)
MULTI_REL = [[1, 5, 8], [4], [], [10]]


def test_users_without_relevant_items_are_excluded_from_the_mean():
    # precision: (0.4 + 1/5 + 0) / 3 = 0.2 (counting user 2 as 0 would give 0.15)
    assert precision_at_k(MULTI_REC, MULTI_REL, 5) == pytest.approx(0.2)
    # recall: (2/3 + 1/1 + 0) / 3 = 5/9
    assert recall_at_k(MULTI_REC, MULTI_REL, 5) == pytest.approx(5 / 9)
    # hit rate: (1 + 1 + 0) / 3
    assert hit_rate_at_k(MULTI_REC, MULTI_REL, 5) == pytest.approx(2 / 3)
    # nDCG: user 0 as above, user 1 = (1/log2 3) / 1, user 3 = 0
    user0 = (1 / LOG2_3 + 1 / LOG2_5) / (1 + 1 / LOG2_3 + 0.5)
    assert ndcg_at_k(MULTI_REC, MULTI_REL, 5) == pytest.approx((user0 + 1 / LOG2_3) / 3)
    # MAP: user 0 = 1/3, user 1 = (1/2) / 1, user 3 = 0 -> (1/3 + 1/2) / 3 = 5/18
    assert map_at_k(MULTI_REC, MULTI_REL, 5) == pytest.approx(5 / 18)


def test_no_user_with_relevant_items_gives_zero():
    rec = np.array([[1, 2], [3, 4]])
    for fn in (precision_at_k, recall_at_k, hit_rate_at_k, ndcg_at_k, map_at_k):
        assert fn(rec, [[], []], 2) == 0.0


def test_padding_minus_one_never_counts_as_a_hit():
    rec = np.array([[-1, -1, -1]])
    rel = [[-1]]  # even an (odd) -1 in the relevant set must not match padding
    assert precision_at_k(rec, rel, 3) == 0.0
    assert hit_rate_at_k(rec, rel, 3) == 0.0
    assert ndcg_at_k(rec, rel, 3) == 0.0
    assert map_at_k(rec, rel, 3) == 0.0
    rec = np.array([[-1, 7, -1]])
    rel = [[-1, 7]]  # |R| = 2 (the -1 is an unrecommendable relevant item), one real hit at rank 2
    assert precision_at_k(rec, rel, 3) == pytest.approx(1 / 3)
    assert recall_at_k(rec, rel, 3) == pytest.approx(1 / 2)


def test_fewer_columns_than_k_count_as_misses():
    rec = np.array([[4, 1]])
    rel = [[1, 9]]
    # k = 5 but only 2 ranks: precision divides by k -> 1/5, not 1/2
    assert precision_at_k(rec, rel, 5) == pytest.approx(0.2)
    assert recall_at_k(rec, rel, 5) == pytest.approx(0.5)  # 1 / 2
    # DCG = 1/log2(3); IDCG = min(2, 5) = 2 hits = 1 + 1/log2(3)
    assert ndcg_at_k(rec, rel, 5) == pytest.approx((1 / LOG2_3) / (1 + 1 / LOG2_3))
    assert map_at_k(rec, rel, 5) == pytest.approx(0.25)  # (1/2) / 2
    assert hit_rate_at_k(rec, rel, 5) == 1.0


def test_duplicate_relevant_items_count_once():
    rec = np.array([[1, 2]])
    assert recall_at_k(rec, [[1, 1, 5]], 2) == pytest.approx(0.5)  # |{1, 5}| = 2


def test_relevant_rows_may_be_sets_arrays_or_lists():
    rec = np.array([[3, 1, 7, 5, 9], [2, 4, 0, 6, 8]])
    expected = precision_at_k(rec, [[1, 5, 8], [4]], 5)
    assert precision_at_k(rec, [{1, 5, 8}, frozenset({4})], 5) == pytest.approx(expected)
    assert precision_at_k(rec, [np.array([1, 5, 8]), np.array([4])], 5) == pytest.approx(expected)
    assert precision_at_k(rec, ({8, 5, 1}, (4,)), 5) == pytest.approx(expected)


def test_ndcg_agrees_with_scikit_learn_on_random_binary_cases():
    rng = np.random.default_rng(0)
    n_items, k = 30, 7
    for _ in range(20):
        rec = np.stack([rng.permutation(n_items)[:10] for _ in range(5)])
        rel = [rng.choice(n_items, size=int(rng.integers(1, 9)), replace=False) for _ in range(5)]
        y_true = np.zeros((5, n_items))
        y_score = np.zeros((5, n_items))
        for r in range(5):
            y_true[r, rel[r]] = 1.0
            y_score[r, rec[r]] = np.arange(10, 0, -1)  # ranked items score 10..1, the rest 0
        assert ndcg_at_k(rec, rel, k) == pytest.approx(ndcg_score(y_true, y_score, k=k))


def test_catalog_coverage_by_hand():
    rec = np.array([[0, 1, 5], [1, 3, -1]])
    assert catalog_coverage_at_k(rec, 8, 1) == pytest.approx(2 / 8)  # {0, 1}
    assert catalog_coverage_at_k(rec, 8, 2) == pytest.approx(3 / 8)  # {0, 1, 3}
    assert catalog_coverage_at_k(rec, 8, 3) == pytest.approx(4 / 8)  # {0, 1, 3, 5}; -1 is not an item
    assert catalog_coverage_at_k(rec, 8, 10) == pytest.approx(4 / 8)  # k beyond the columns


@pytest.mark.parametrize("fn", [precision_at_k, recall_at_k, hit_rate_at_k, ndcg_at_k, map_at_k])
def test_validation(fn):
    rec = np.array([[1, 2, 3]])
    with pytest.raises(ValueError, match="k must be >= 1"):
        fn(rec, [[1]], 0)
    with pytest.raises(ValueError, match="2-D"):
        fn(np.array([1, 2, 3]), [[1]], 2)
    with pytest.raises(ValueError, match="rows"):
        fn(rec, [[1], [2]], 2)


def test_coverage_validation():
    rec = np.array([[1, 2, 3]])
    for k in (0, -1):
        with pytest.raises(ValueError, match="k must be >= 1"):
            catalog_coverage_at_k(rec, 10, k)
    with pytest.raises(ValueError, match="n_items"):
        catalog_coverage_at_k(rec, 0, 2)
    with pytest.raises(ValueError, match="2-D"):
        catalog_coverage_at_k(np.array([1, 2]), 10, 2)


def test_ranking_report_names_and_values():
    report = ranking_report(MULTI_REC, MULTI_REL, 20, ks=(2, 5))
    expected_names = {
        f"{name}_at_{k}"
        for k in (2, 5)
        for name in ("precision", "recall", "ndcg", "map", "hit_rate", "coverage")
    }
    assert set(report) == expected_names
    assert report["ndcg_at_5"] == pytest.approx(ndcg_at_k(MULTI_REC, MULTI_REL, 5))
    assert report["map_at_5"] == pytest.approx(5 / 18)
    assert report["precision_at_2"] == pytest.approx(precision_at_k(MULTI_REC, MULTI_REL, 2))
    # coverage at 2: {3, 1, 2, 4, 4, 1, 6, 8} -> {1, 2, 3, 4, 6, 8} = 6 of 20 (users without relevant items count)
    assert report["coverage_at_2"] == pytest.approx(6 / 20)
    assert all(isinstance(v, float) for v in report.values())


def test_ranking_report_prefix():
    report = ranking_report(MULTI_REC, MULTI_REL, 20, ks=(10,), prefix="baseline_")
    assert "baseline_ndcg_at_10" in report
    assert "baseline_coverage_at_10" in report
    assert all(name.startswith("baseline_") for name in report)
    assert len(report) == 6
    plain = ranking_report(MULTI_REC, MULTI_REL, 20, ks=(10,))
    assert {f"baseline_{name}": v for name, v in plain.items()} == report
