"""Weighting schemes on a 3 x 3 matrix worked by hand, and fold-in consistency of bm25."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from timbral.weighting import SCHEMES, Weighting

# users x items (a, b, c)
DENSE = np.array(
    [
        [2.0, 1.0, 0.0],
        [1.0, 0.0, 0.0],
        [0.0, 3.0, 4.0],
    ]
)


def matrix() -> sp.csr_matrix:
    return sp.csr_matrix(DENSE, dtype=np.float32)


def test_schemes_are_the_documented_four():
    assert SCHEMES == ("raw", "binary", "log1p", "bm25")


def test_raw_is_the_identity():
    out = Weighting("raw").fit(matrix()).transform(matrix())
    np.testing.assert_array_equal(out.toarray(), DENSE)
    assert out.dtype == np.float32


def test_binary():
    out = Weighting("binary").fit(matrix()).transform(matrix())
    np.testing.assert_array_equal(out.toarray(), [[1, 1, 0], [1, 0, 0], [0, 1, 1]])


def test_log1p():
    out = Weighting("log1p").fit(matrix()).transform(matrix())
    expected = [
        [math.log(3), math.log(2), 0],
        [math.log(2), 0, 0],
        [0, math.log(4), math.log(5)],
    ]
    np.testing.assert_allclose(out.toarray(), expected, rtol=1e-6)


def test_bm25_by_hand():
    k1, b = 1.5, 0.5
    w = Weighting("bm25", k1=k1, b=b).fit(matrix())
    # 3 users; document frequencies a=2, b=2, c=1; idf = max(0, log(3 / (1 + df))) + 0.001
    idf = [0.0 + 1e-3, 0.0 + 1e-3, math.log(3 / 2) + 1e-3]
    np.testing.assert_allclose(w.idf, idf, rtol=1e-6)
    # average user length = (3 + 1 + 7) / 3
    avg = 11 / 3
    assert w.avg_length == pytest.approx(avg)

    def cell(tf, length, idf_j):
        norm = k1 * (1 - b + b * length / avg)
        return tf * (k1 + 1) / (norm + tf) * idf_j

    expected = [
        [cell(2, 3, idf[0]), cell(1, 3, idf[1]), 0],
        [cell(1, 1, idf[0]), 0, 0],
        [0, cell(3, 7, idf[1]), cell(4, 7, idf[2])],
    ]
    out = w.transform(matrix())
    np.testing.assert_allclose(out.toarray(), expected, rtol=1e-5)
    # one cell pinned as a number: user 2, item c: norm = 1.5 * (0.5 + 0.5 * 7 / (11/3)) = 2.181818...,
    # 4 * 2.5 / (2.181818 + 4) = 1.617647; times idf log(1.5) + 0.001 = 0.406465 -> 0.657517...
    assert out[2, 2] == pytest.approx(0.657517, rel=1e-5)


def test_bm25_defaults_are_k1_1_2_and_b_0_75():
    w = Weighting()
    assert (w.scheme, w.k1, w.b) == ("bm25", 1.2, 0.75)


def test_bm25_of_a_folded_in_row_equals_its_training_row():
    rng = np.random.default_rng(0)
    dense = rng.integers(0, 5, size=(12, 9)).astype(np.float32) * (rng.random((12, 9)) < 0.5)
    train = sp.csr_matrix(dense)
    w = Weighting("bm25").fit(train)
    trained = w.transform(train).toarray()
    for r in range(train.shape[0]):
        items = train.indices[train.indptr[r] : train.indptr[r + 1]]
        values = train.data[train.indptr[r] : train.indptr[r + 1]]
        # a history given as (items, values) in shuffled order, as a new user's would arrive
        order = rng.permutation(items.size)
        row = sp.csr_matrix(
            (values[order].astype(np.float64), (np.zeros(items.size, dtype=np.int64), items[order])),
            shape=(1, train.shape[1]),
        )
        np.testing.assert_allclose(w.transform(row).toarray()[0], trained[r], rtol=1e-6)


def test_fit_is_a_no_op_except_for_bm25():
    for scheme in ("raw", "binary", "log1p"):
        w = Weighting(scheme).fit(matrix())
        assert w.idf.size == 0 and w.avg_length == 1.0


def test_bm25_fit_accepts_csc_and_duplicate_entries():
    reference = Weighting("bm25").fit(matrix())
    from_csc = Weighting("bm25").fit(sp.csc_matrix(DENSE))  # a CSC's ``indices`` are rows, not items
    np.testing.assert_allclose(from_csc.idf, reference.idf)
    # the same matrix with cell (2, c) = 4 stored as two entries 1 + 3 (non-canonical CSR):
    # item c still has one user, so its idf stays log(3 / 2) + 0.001
    dense_rows = [[0, 1], [0], [1, 2, 2]]
    dense_vals = [[2.0, 1.0], [1.0], [3.0, 1.0, 3.0]]
    indptr = np.cumsum([0] + [len(r) for r in dense_rows])
    dup = sp.csr_matrix((np.concatenate(dense_vals), np.concatenate(dense_rows), indptr), shape=DENSE.shape)
    assert dup.nnz == 6
    np.testing.assert_allclose(dup.toarray(), DENSE)
    np.testing.assert_allclose(Weighting("bm25").fit(dup).idf, reference.idf, rtol=1e-6)
    assert Weighting("bm25").fit(dup).avg_length == pytest.approx(reference.avg_length)


def test_stored_zeros_and_the_input():
    """A stored zero is an interaction (it counts for the minimums and popularity): binary makes it 1, the
    value-based schemes give it weight 0 and drop it. The input is never modified."""
    m = sp.csr_matrix((np.array([0.0, 2.0]), np.array([0, 1]), np.array([0, 2])), shape=(1, 2))
    before = m.data.copy()
    for scheme in SCHEMES:
        out = Weighting(scheme).fit(m).transform(m)
        expected_cols = [0, 1] if scheme == "binary" else [1]
        assert sorted(out.indices.tolist()) == expected_cols, scheme
        assert (out.data > 0).all(), scheme
        np.testing.assert_array_equal(m.data, before)


def test_unknown_scheme_is_rejected_by_name():
    with pytest.raises(ValueError, match=r"weighting must be one of raw, binary, log1p, bm25; got 'tfidf'"):
        Weighting("tfidf")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_saved_form_reproduces_the_transform(scheme):
    w = Weighting(scheme, k1=0.9, b=0.3).fit(matrix())
    restored = Weighting.from_saved(w.to_metadata(), w.to_arrays())
    assert restored.scheme == scheme and restored.k1 == 0.9 and restored.b == 0.3
    np.testing.assert_array_equal(restored.transform(matrix()).toarray(), w.transform(matrix()).toarray())
    assert w.to_arrays()["weighting_idf"].dtype == np.float32
