"""NMFRecommender on matrices with a known right answer.

The main fixture is a block ("checkerboard") matrix: three groups of users, each listening only to its own group
of items, and every user holding out one item of their group. Any sensible rank-3 factorisation puts one
component per block, so a user's unseen recommendation must be the held-out item of their own block, and an
item's neighbours must be the other items of its block.
"""

from __future__ import annotations

import numpy as np
import pytest

from timbral.interactions import Interactions
from timbral.nmf import NMFRecommender, centred_profiles
from timbral.params import DegenerateFit, NMFParams

# (users, items) per block; different sizes so that no two blocks are interchangeable
BLOCKS = [(8, 6), (7, 5), (9, 7)]


def block_interactions() -> tuple[Interactions, dict[int, int], dict[int, set[int]]]:
    """The block matrix, {user index: held-out item index}, {user index: the item indices of their block}."""
    users, items, values = [], [], []
    held_out_ids = {}
    for g, (n_users, n_items) in enumerate(BLOCKS):
        for j in range(n_users):
            user = 1000 * g + j  # integer ids: the "int" kind must survive save/load
            held_out_ids[user] = f"g{g}-item{j % n_items}"
            for i in range(n_items):
                if i == j % n_items:
                    continue
                users.append(user)
                items.append(f"g{g}-item{i}")
                values.append(1.0 + (i + j) % 3)
    data = Interactions.from_arrays(users, items, values)
    held_out = {data.users.index(u): data.items.index(i) for u, i in held_out_ids.items()}
    block_items = {}
    for u_id in held_out_ids:
        g = u_id // 1000
        block_items[data.users.index(u_id)] = {data.items.index(f"g{g}-item{i}") for i in range(BLOCKS[g][1])}
    assert len(held_out) == data.n_users == sum(b[0] for b in BLOCKS)
    assert data.n_items == sum(b[1] for b in BLOCKS)
    assert -1 not in held_out.values()
    return data, held_out, block_items


DATA, HELD_OUT, BLOCK_ITEMS = block_interactions()
ALL_USERS = np.arange(DATA.n_users)


def seen_items(u: int) -> set[int]:
    m = DATA.matrix
    return set(m.indices[m.indptr[u] : m.indptr[u + 1]].tolist())


def item_block(i: int) -> set[int]:
    return next(block for block in BLOCK_ITEMS.values() if i in block)


def fit(data: Interactions = DATA, **params) -> NMFRecommender:
    base = {"n_components": 3, "max_iter": 200, "random_state": 0}
    return NMFRecommender(**{**base, **params}).fit(data)


@pytest.fixture(scope="module")
def model() -> NMFRecommender:
    return fit()


CONFIGS = [
    {},  # defaults: binary, nndsvda, cd
    {"weighting": "raw", "init": "nndsvd"},
    {"weighting": "binary", "init": "nndsvdar"},
    {"weighting": "log1p", "solver": "mu", "max_iter": 400},
    {"weighting": "bm25", "solver": "mu", "beta_loss": "kullback-leibler", "max_iter": 400, "confidence": "none"},
    {"confidence": "none"},  # plain scikit-learn NMF
    {"weighting": "bm25", "init": "random", "random_state": 3},
    {"confidence": "idf"},
    {"confidence": "idf", "confidence_shift": 0.0},  # the refinement without its default shift
    {"confidence": "idf", "confidence_alpha": 5.0, "confidence_reg": 0.5, "weighting": "log1p"},
]


# ----------------------------------------------------------------------------- the block structure
@pytest.mark.parametrize(
    "params", CONFIGS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "defaults"
)
def test_recommendations_come_from_the_users_own_block(params):
    m = fit(**params)
    # with seen items excluded, each user's best item is the held-out item of their block
    idx, scores = m.recommend(ALL_USERS, 1)
    for u in ALL_USERS:
        assert idx[u, 0] == HELD_OUT[u], f"user {u}"
    # without exclusion, the top |block| items are exactly the block, and clearly separated from the rest
    for u in ALL_USERS:
        block = BLOCK_ITEMS[u]
        idx, scores = m.recommend([u], m.n_items, exclude_seen=False)
        assert set(idx[0, : len(block)].tolist()) == block, f"user {u}"
        assert HELD_OUT[u] in idx[0, : len(block)]
        # a refined model's scores estimate value + shift: a zero is fitted at the shift, not at 0
        floor = m.fitted_shift
        if floor == 0:
            assert scores[0, len(block) - 1] > 10 * max(scores[0, len(block)], 1e-12)
        else:  # fitting the shift off the blocks takes a dimension of its own; at rank 3 it leaks into them
            assert scores[0, len(block) - 1] > 1.5 * scores[0, len(block)]  # 1.7-4.7x measured


def test_exclude_seen_removes_exactly_the_seen_items(model):
    idx, scores = model.recommend(ALL_USERS, model.n_items)
    for u in ALL_USERS:
        seen = seen_items(u)
        valid = idx[u][idx[u] >= 0]
        assert not seen & set(valid.tolist())
        assert valid.size == model.n_items - len(seen)  # every unseen item, each once
        assert len(set(valid.tolist())) == valid.size
        assert (idx[u, valid.size :] == -1).all()
        assert np.isneginf(scores[u, valid.size :]).all()
        assert np.isfinite(scores[u, : valid.size]).all()
    idx, _ = model.recommend(ALL_USERS, model.n_items, exclude_seen=False)
    assert (idx >= 0).all()


def test_scores_are_sorted_and_results_are_two_dimensional(model):
    idx, scores = model.recommend([0], 4)
    assert idx.shape == (1, 4) and scores.shape == (1, 4)
    assert idx.dtype == np.int64 and scores.dtype == np.float32
    idx, scores = model.recommend(3, 4)  # a scalar is a batch of one
    assert idx.shape == (1, 4)
    idx, scores = model.recommend(ALL_USERS, 7, exclude_seen=False)
    assert idx.shape == (DATA.n_users, 7)
    assert (np.diff(scores, axis=1) <= 0).all()
    idx, scores = model.recommend([], 5)
    assert idx.shape == (0, 5) and scores.shape == (0, 5)


def test_exclude_and_include_apply_per_row(model):
    a, b, c, d = (DATA.users.index(uid) for uid in (0, 1, 1000, 2000))  # blocks 0, 0, 1, 2
    assert BLOCK_ITEMS[a] == BLOCK_ITEMS[b] != BLOCK_ITEMS[c] != BLOCK_ITEMS[d]
    other_block = sorted(BLOCK_ITEMS[d])[:2]
    seen_b = sorted(seen_items(b))[0]
    users = [a, b, c, d]

    idx, _ = model.recommend(users, 3, exclude=[[HELD_OUT[a]], [], [HELD_OUT[c], HELD_OUT[d]], []])
    assert HELD_OUT[a] not in idx[0]
    assert idx[1, 0] == HELD_OUT[b]  # row 0's exclusion does not leak into row 1
    assert HELD_OUT[c] not in idx[2]
    assert idx[3, 0] == HELD_OUT[d]  # row 2 excluded HELD_OUT[d] for itself only

    include = [None, [*other_block, seen_b], [HELD_OUT[c]], []]
    idx, scores = model.recommend(users, 4, include=include)
    assert idx[0, 0] == HELD_OUT[a]  # None: no restriction
    assert set(idx[1, :2].tolist()) == set(other_block)  # only the allowed items, the seen one still masked
    assert (idx[1, 2:] == -1).all() and np.isneginf(scores[1, 2:]).all()
    assert idx[2].tolist() == [HELD_OUT[c], -1, -1, -1]
    assert (idx[3] == -1).all() and np.isneginf(scores[3]).all()

    # include and exclude together: the intersection of "allowed" and "not excluded"
    idx, _ = model.recommend([d], 3, include=[other_block], exclude=[[other_block[0]]], exclude_seen=False)
    assert idx[0].tolist() == [other_block[1], -1, -1]


def test_mask_lists_must_have_one_entry_per_row(model):
    with pytest.raises(ValueError, match="exclude must have one entry per row"):
        model.recommend([0, 1], 3, exclude=[[1]])
    with pytest.raises(ValueError, match="include must have one entry per row"):
        model.recommend([0, 1], 3, include=[None, None, None])


def test_unknown_item_minus_one_in_exclude_or_include_does_not_touch_the_last_item(model):
    last = model.n_items - 1
    user = next(u for u in ALL_USERS if last not in seen_items(u))
    full, _ = model.recommend([user], model.n_items)
    assert last in full[0]
    for kwargs in ({"exclude": [[-1]]}, {"include": [[-1]]}):
        try:
            idx, _ = model.recommend([user], model.n_items, **kwargs)
        except (IndexError, ValueError):
            continue  # refusing -1 outright would be acceptable too
        if "exclude" in kwargs:
            assert last in idx[0], "exclude=[[-1]] removed the last item"
        else:
            assert last not in idx[0], "include=[[-1]] recommended the last item"


# ----------------------------------------------------------------------------- similar items
def test_similar_items_stay_in_the_block_and_never_return_the_item(model):
    items = np.arange(model.n_items)
    for i in items:
        block = item_block(i)
        idx, scores = model.similar_items([i], len(block) - 1)
        assert set(idx[0].tolist()) == block - {i}
        assert (scores[0] > 0.9).all()  # cosine within a block ~ 1
    idx, scores = model.similar_items(items, model.n_items)
    assert idx.shape == (model.n_items, model.n_items)
    for i in items:
        assert i not in idx[i, :-1]
        assert idx[i, -1] == -1 and np.isneginf(scores[i, -1])  # only the item itself is missing
        assert (np.diff(scores[i, :-1]) <= 0).all()
        outside = scores[i, len(item_block(i)) - 1 : -1]
        assert (outside < 0.1).all()  # cosine across blocks ~ 0


def test_with_a_shift_similar_items_ignore_the_level_every_item_shares(tmp_path):
    m = fit(confidence_shift=1.0)
    unit = m.item_factors / np.linalg.norm(m.item_factors, axis=1)[:, None]
    idx, scores = m.similar_items(np.arange(m.n_items), m.n_items)
    raw_across = []
    for i in range(m.n_items):
        block = item_block(i)
        inside = len(block) - 1
        assert set(idx[i, :inside].tolist()) == block - {i}
        assert (scores[i, :inside] > 0.9).all()
        assert (scores[i, inside:-1] < 0.1).all()  # the other blocks' scores go the other way
        raw_across += [float(unit[i] @ unit[j]) for j in range(m.n_items) if j not in block]
    # the plain cosine of these factors would rate other blocks well above 0.1: the level is really there
    assert max(raw_across) > 0.3
    m.save(tmp_path / "m")
    for got, want in zip(NMFRecommender.load(tmp_path / "m").similar_items(np.arange(m.n_items), 5),
                         m.similar_items(np.arange(m.n_items), 5), strict=True):
        np.testing.assert_array_equal(got, want)


def test_centred_profiles_give_the_correlation_of_two_items_predicted_scores():
    rng = np.random.default_rng(4)
    W, H = rng.random((40, 5)), rng.random((12, 5))
    G = centred_profiles(W, H)
    unit = G / np.linalg.norm(G, axis=1)[:, None]
    np.testing.assert_allclose(unit @ unit.T, np.corrcoef((W @ H.T).T), atol=1e-10)


# ----------------------------------------------------------------------------- score
def test_score_agrees_with_recommend(model):
    idx, rec_scores = model.recommend(ALL_USERS, 8, exclude_seen=False)
    np.testing.assert_allclose(model.score(ALL_USERS, idx), rec_scores, rtol=1e-5, atol=1e-7)
    expected = model.user_factors @ model.item_factors.T
    some = np.array([[0, 5, 2]] * DATA.n_users)
    np.testing.assert_allclose(model.score(ALL_USERS, some), expected[:, [0, 5, 2]], rtol=1e-5, atol=1e-7)


def test_score_of_unknown_item_is_nan(model):
    idx, rec_scores = model.recommend([0, 1], 4, include=[[2, 3], [4]])  # padded rows
    assert (idx == -1).any()
    scores = model.score([0, 1], idx)
    assert np.isnan(scores[idx == -1]).all()
    np.testing.assert_allclose(scores[idx >= 0], rec_scores[idx >= 0], rtol=1e-5, atol=1e-7)


def test_score_shape_is_checked(model):
    with pytest.raises(ValueError, match="item_indices must be 2 x m"):
        model.score([0, 1], [1, 2])
    with pytest.raises(ValueError, match="item_indices must be 2 x m"):
        model.score([0, 1], [[1, 2]])


# ----------------------------------------------------------------------------- fold-in
def low_rank_interactions(seed: int = 3) -> Interactions:
    """59 x 40 interactions sampled from a non-negative rank-4 model: a factorisation without exact ties."""
    rng = np.random.default_rng(seed)
    W = rng.gamma(1.0, 1.0, (60, 4)) * (rng.random((60, 4)) < 0.6)
    H = rng.gamma(1.0, 1.0, (4, 40)) * (rng.random((4, 40)) < 0.5)
    P = W @ H
    mask = rng.random(P.shape) < np.clip(P / P.max() * 1.5, 0.05, 0.9)
    u, i = np.nonzero(mask)
    return Interactions.from_arrays(u, i, rng.integers(1, 6, size=u.size).astype(float))


LOW_RANK = low_rank_interactions()


def histories(data: Interactions) -> tuple[list[np.ndarray], list[np.ndarray]]:
    m = data.matrix
    rows = range(data.n_users)
    return (
        [m.indices[m.indptr[r] : m.indptr[r + 1]] for r in rows],
        [m.data[m.indptr[r] : m.indptr[r + 1]] for r in rows],
    )


def assert_fold_in_reproduces_training_users(
    m: NMFRecommender, data: Interactions, vector_rtol: float
) -> None:
    """The criterion, and why it is the honest one.

    fold_in solves, with the item factors fixed, the same (regularised, non-negative) least-squares problem the
    coordinate-descent fit solves for each user row. At a converged fit the training row is that problem's
    solution (the Gram matrix is positive definite, so it is unique), so fold-in of the user's own history
    must give the training row back up to the fit's stopping tolerance. The top-10 then agrees up to near-ties:
    each of the folded-in top-10, scored with the *trained* user vector, must score like the trained top-10 at
    the same rank (within 0.1% of the user's best score). That allows two items whose scores differ by less
    than that to swap, and nothing else; exact equality would be asserting float noise.
    """
    items, values = histories(data)
    folded = m.fold_in(items, values)
    trained = m.user_factors
    err = np.linalg.norm(folded - trained, axis=1) / np.maximum(np.linalg.norm(trained, axis=1), 1e-12)
    assert err.max() < vector_rtol, f"worst relative difference {err.max():.4f}"
    want_idx, want_scores = m.recommend_vectors(trained, 10)
    got_idx, _ = m.recommend_vectors(folded, 10)
    trained_scores = trained @ m.item_factors.T
    got_under_trained = np.take_along_axis(trained_scores, got_idx, axis=1)
    tolerance = 1e-3 * want_scores[:, :1]
    assert (np.abs(got_under_trained - want_scores) <= tolerance).all()
    # and in practice the lists are simply identical for (nearly) everyone
    assert (got_idx == want_idx).all(axis=1).mean() >= 0.9


@pytest.mark.parametrize(
    "params",
    [
        {},  # defaults: refined with idf confidences, so fold-in solves the refinement's weighted problem
        # plain NMF: fold-in must use scikit-learn's scaling of both penalties
        {"confidence": "none"},
        {"alpha_W": 0.01, "l1_ratio": 0.5, "confidence": "none"},
        {"alpha_W": 0.02, "l1_ratio": 0.0, "confidence": "none"},
        {"weighting": "raw", "confidence": "none"},
        {"weighting": "log1p", "alpha_W": 0.001, "l1_ratio": 1.0, "confidence": "none"},
        {"weighting": "raw"},
        {"confidence": "idf", "confidence_alpha": 3.0, "confidence_reg": 0.2, "weighting": "log1p"},
        {"confidence_shift": 0.0},
        {"confidence_shift": 1.5, "confidence_reg": 0.5},
    ],
    ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "defaults",
)
def test_fold_in_of_a_training_users_history_reproduces_their_recommendations(params):
    m = fit(LOW_RANK, n_components=4, max_iter=1000, tol=1e-7, **params)
    assert m.report.converged
    assert_fold_in_reproduces_training_users(m, LOW_RANK, vector_rtol=1e-2)


def test_fold_in_criterion_is_sensitive_to_the_regularisation(monkeypatch):
    """Control: drop the L1 term from fold-in and the same check fails (so the one above can fail too)."""
    m = fit(LOW_RANK, n_components=4, max_iter=1000, tol=1e-7, alpha_W=0.01, l1_ratio=0.5, confidence="none")
    _, l2 = m.params.user_penalties(m.n_items)
    monkeypatch.setattr(m.params, "user_penalties", lambda n_items: (0.0, l2))
    with pytest.raises(AssertionError, match="worst relative difference"):
        assert_fold_in_reproduces_training_users(m, LOW_RANK, vector_rtol=1e-2)


def test_fold_in_reproduces_training_users_for_a_kullback_leibler_model():
    m = fit(LOW_RANK, n_components=4, solver="mu", beta_loss="kullback-leibler", max_iter=2000, tol=1e-9, confidence="none",
            alpha_W=0.0)
    assert m.report.converged
    # looser than the Frobenius case, since MU converges more slowly: 5% on the vectors
    assert_fold_in_reproduces_training_users(m, LOW_RANK, vector_rtol=5e-2)


def test_fold_in_reproduces_training_users_for_a_regularised_kullback_leibler_model():
    """With the default penalty the vectors agree to 3e-4, but the penalty shrinks this low-rank data's scores
    into near-ties, so a quarter of the top-10 lists swap neighbours: the vectors are the check here."""
    m = fit(LOW_RANK, n_components=4, solver="mu", beta_loss="kullback-leibler", max_iter=2000, tol=1e-9, confidence="none",
            alpha_W=1e-3)
    assert m.report.converged
    items, values = histories(LOW_RANK)
    folded, trained = m.fold_in(items, values), m.user_factors
    err = np.linalg.norm(folded - trained, axis=1) / np.maximum(np.linalg.norm(trained, axis=1), 1e-12)
    assert err.max() < 1e-3, f"worst relative difference {err.max():.5f}"


def test_fold_in_of_training_histories_in_the_block_matrix(model):
    items, values = histories(DATA)
    folded = model.fold_in(items, values)
    idx, _ = model.recommend_vectors(folded, 1, seen=items)
    assert [idx[u, 0] for u in ALL_USERS] == [HELD_OUT[u] for u in ALL_USERS]


def test_fold_in_of_an_empty_history_is_a_zero_vector(model):
    items, values = histories(DATA)
    out = model.fold_in(
        [items[0], [], items[5], np.array([], dtype=np.int64)], [values[0], [], values[5], []]
    )
    assert out.shape == (4, model.user_factors.shape[1]) and out.dtype == np.float32
    assert (out[1] == 0).all() and (out[3] == 0).all()
    np.testing.assert_array_equal(out[0], model.fold_in([items[0]], [values[0]])[0])
    np.testing.assert_array_equal(out[2], model.fold_in([items[5]], [values[5]])[0])
    assert (out[0] > 0).any()
    # a stored zero is an interaction: binary weighting (the default) counts it, as it does in training;
    # under a value-based weighting zero plays weigh nothing
    np.testing.assert_array_equal(model.fold_in([[1, 2]], [[0.0, 0.0]]), model.fold_in([[1, 2]]))
    assert (fit(weighting="log1p").fold_in([[1, 2]], [[0.0, 0.0]]) == 0).all()
    assert model.fold_in([]).shape == (0, model.user_factors.shape[1])


def test_fold_in_values_default_to_one_and_duplicates_add_up(model):
    np.testing.assert_array_equal(model.fold_in([[1, 2]]), model.fold_in([[1, 2]], [[1.0, 1.0]]))
    np.testing.assert_allclose(
        model.fold_in([[1, 1, 2]], [[1.0, 2.0, 1.0]]), model.fold_in([[1, 2]], [[3.0, 1.0]])
    )


def test_fold_in_validation(model):
    with pytest.raises(IndexError, match="history 1: item index out of range"):
        model.fold_in([[0], [model.n_items]])
    with pytest.raises(IndexError, match="history 0"):
        model.fold_in([[-1]])
    with pytest.raises(ValueError, match="history 0: 2 items but 1 values"):
        model.fold_in([[0, 1]], [[1.0]])
    for bad in (-1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="finite numbers >= 0"):
            model.fold_in([[0, 1]], [[1.0, bad]])


def test_recommend_vectors_checks_the_vector_shape(model):
    k = model.user_factors.shape[1]
    with pytest.raises(ValueError, match=f"vectors must be b x {k}"):
        model.recommend_vectors(np.ones(k), 3)
    with pytest.raises(ValueError, match=f"vectors must be b x {k}"):
        model.recommend_vectors(np.ones((2, k + 1)), 3)


# ----------------------------------------------------------------------------- popularity
def popularity_interactions() -> Interactions:
    # item:     z  y  x  u  w  v
    # users:    5  4  3  3  2  1   (u ties with x; "u" sorts first, so it has the lower index)
    # plays: user 4 plays z 100 times: popularity counts users, not plays
    rows = [
        ("p0", "zyxwvu"),
        ("p1", "zyxwu"),
        ("p2", "zyxu"),
        ("p3", "zy"),
        ("p4", "z"),
    ]
    users, items, values = [], [], []
    for user, its in rows:
        for it in its:
            users.append(user)
            items.append(it)
            values.append(100.0 if (user, it) == ("p4", "z") else 1.0)
    return Interactions.from_arrays(users, items, values)


def test_recommend_popular_ranks_by_number_of_users_and_respects_masks():
    data = popularity_interactions()
    m = fit(data, n_components=2)
    ix = {name: data.items.index(name) for name in "zyxuwv"}
    assert ix["u"] < ix["x"]
    idx, scores = m.recommend_popular(2, 4)
    expected = [ix[c] for c in "zyux"]  # 5, 4, 3 (u, lower index), 3 (x)
    assert idx.tolist() == [expected, expected]
    np.testing.assert_array_equal(scores, [[5, 4, 3, 3]] * 2)

    idx, _ = m.recommend_popular(2, 3, seen=[[ix["z"]], []], exclude=[[], [ix["y"]]])
    assert idx[0].tolist() == [ix[c] for c in "yux"]
    assert idx[1].tolist() == [ix[c] for c in "zux"]

    idx, scores = m.recommend_popular(
        3, 3, include=[[ix["v"], ix["w"]], None, [ix["v"]]], seen=[[], [], [ix["v"]]]
    )
    assert idx[0].tolist() == [ix["w"], ix["v"], -1] and np.isneginf(scores[0, 2])
    assert idx[1].tolist() == [ix[c] for c in "zyu"]
    assert idx[2].tolist() == [-1, -1, -1]

    idx, scores = m.recommend_popular(0, 3)
    assert idx.shape == (0, 3)
    idx, scores = m.recommend_popular(1, 10)
    assert (idx[0, 6:] == -1).all()  # only 6 items


def test_recommend_popular_does_not_change_the_popularity(model):
    before = model.popularity.copy()
    model.recommend_popular(2, 3, exclude=[[0, 1], [2]])
    np.testing.assert_array_equal(model.popularity, before)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"solver": "als"}, r"solver must be one of cd, mu \(got 'als'\)"),
        ({"beta_loss": "kullback-leibler", "confidence": "none"}, r"beta_loss 'kullback-leibler' needs solver 'mu'"),
        ({"beta_loss": "itakura-saito", "solver": "mu", "confidence": "none"}, "itakura-saito"),
        ({"beta_loss": "l1"}, "beta_loss must be one of"),
        ({"alpha_W": -0.1}, "alpha_W and alpha_H must be >= 0"),
        ({"alpha_H": -1.0}, "alpha_W and alpha_H must be >= 0"),
        ({"weighting": "tfidf"}, r"weighting must be one of raw, binary, log1p, bm25; got 'tfidf'"),
        ({"init": "svd"}, "init must be one of"),
        ({"n_components": 0}, "n_components must be >= 1"),
        ({"l1_ratio": 1.5}, "l1_ratio must be within 0..1"),
        ({"max_iter": 0}, "max_iter must be >= 1"),
        ({"tol": -1e-3}, "tol must be >= 0"),
        ({"confidence": "bm25"}, r"confidence must be one of none, idf \(got 'bm25'\)"),
        ({"solver": "mu", "beta_loss": "kullback-leibler"}, "set confidence 'none' to fit beta_loss 'kullback-leibler'"),
        ({"confidence_alpha": -1.0}, "confidence_alpha must be >= 0"),
        ({"confidence_reg": -2.0}, "confidence_reg must be >= 0 or 'auto'"),
        ({"confidence_sweeps": 0}, "confidence_sweeps must be >= 1"),
        ({"confidence_shift": -0.1}, "confidence_shift must be a finite number >= 0"),
        ({"confidence_shift": float("inf")}, "confidence_shift must be a finite number >= 0"),
        ({"confidence_shift": float("nan")}, "confidence_shift must be a finite number >= 0"),
    ],
)
def test_parameter_validation_names_the_parameter(overrides, message):
    with pytest.raises(ValueError, match=message):
        NMFRecommender(**overrides)
    with pytest.raises(ValueError, match=message):
        NMFParams(**overrides).validate()


def test_a_penalty_that_zeroes_every_user_factor_is_a_degenerate_fit_naming_the_knobs():
    with pytest.raises(DegenerateFit, match=r"every user factor to zero \(alpha_W=1.0, alpha_H=same, l1_ratio=1.0\)"):
        fit(alpha_W=1.0, l1_ratio=1.0)
    assert issubclass(DegenerateFit, ValueError)  # callers that catch ValueError keep working
    assert fit(alpha_W=1e-3, l1_ratio=1.0).user_factors.any()  # a light penalty on the same data is fine


def test_all_problems_are_reported_at_once():
    with pytest.raises(ValueError, match=r"solver must be .*; .*alpha_W and alpha_H must be >= 0"):
        NMFRecommender(solver="x", alpha_W=-1)


def test_params_and_overrides_combine():
    m = NMFRecommender(NMFParams(n_components=7, weighting="raw"), weighting="binary")
    assert m.params.n_components == 7 and m.params.weighting == "binary"


def test_out_of_range_indices_raise_index_error(model):
    for bad in ([model.n_users], [-1], [0, model.n_users + 5]):
        with pytest.raises(IndexError, match="user index out of range"):
            model.recommend(bad, 3)
    for bad in ([model.n_items], [-1]):
        with pytest.raises(IndexError, match="item index out of range"):
            model.similar_items(bad, 3)
    with pytest.raises(IndexError, match="user index out of range"):
        model.score([model.n_users], [[0]])
    with pytest.raises(IndexError):
        model.score([0], [[model.n_items]])


# ----------------------------------------------------------------------------- fitting details
def test_fit_report_and_progress():
    calls = []
    m = NMFRecommender(n_components=3, max_iter=50, tol=0.0).fit(DATA, progress=lambda *a: calls.append(a))
    report = m.report
    assert 1 <= report.n_iter <= 50
    assert report.convergence and report.convergence[-1][0] == report.n_iter
    refining = [c for c in calls if c[3:] == ("refine",)]
    calls = [c for c in calls if len(c) == 3]
    assert calls and calls[-1][0] == report.n_iter and all(c[1] == 50 for c in calls)
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    sweeps = m.params.confidence_sweeps
    assert len(report.refinement) == sweeps == 20
    assert [(c[0], c[1], c[2]) for c in refining] == [(s, sweeps, loss) for s, loss in report.refinement]
    errors = [e for _, e in report.convergence]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(errors, errors[1:], strict=False))  # cd never gets worse
    assert report.seconds > 0


def test_fit_is_deterministic_and_clips_n_components():
    a, b = fit(), fit()
    np.testing.assert_array_equal(a.user_factors, b.user_factors)
    np.testing.assert_array_equal(a.item_factors, b.item_factors)
    big = fit(n_components=500)
    assert big.item_factors.shape == (DATA.n_items, min(DATA.n_users, DATA.n_items))
    assert big.user_factors.shape == (DATA.n_users, min(DATA.n_users, DATA.n_items))


def test_fitted_attributes(model):
    assert model.user_factors.shape == (DATA.n_users, 3) and model.user_factors.dtype == np.float32
    assert model.item_factors.shape == (DATA.n_items, 3) and model.item_factors.dtype == np.float32
    assert (model.user_factors >= 0).all() and (model.item_factors >= 0).all()
    assert model.users is DATA.users and model.items is DATA.items
    counts = np.bincount(DATA.matrix.indices, minlength=DATA.n_items)
    np.testing.assert_array_equal(model.popularity, counts)
    np.testing.assert_array_equal(model.seen.toarray(), (DATA.matrix.toarray() != 0).astype(np.int8))


def test_strong_l1_regularisation_does_not_crash_fit():
    try:
        m = fit(alpha_W=1.0, l1_ratio=1.0, max_iter=100)
    except ValueError as exc:
        assert "alpha" in str(exc), f"unhelpful error: {exc}"
        return
    assert np.isfinite(m.user_factors).all()


# ----------------------------------------------------------------------------- persistence
def test_save_load_round_trip_gives_identical_answers(model, tmp_path):
    model.save(tmp_path / "m", extra_metadata={"run_id": "abc"})
    loaded = NMFRecommender.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.user_factors, model.user_factors)
    np.testing.assert_array_equal(loaded.item_factors, model.item_factors)
    np.testing.assert_array_equal(loaded.popularity, model.popularity)
    assert (loaded.seen != model.seen).nnz == 0
    assert loaded.params == model.params
    assert loaded.users.kind == "int" and loaded.items.kind == "str"
    # integer ids get indices in numeric order (0, 1, 2, ...), and the answers come back as ints
    assert loaded.users.externals(range(3)) == model.users.externals(range(3)) == [0, 1, 2]
    assert loaded.users.index(2003) == model.users.index(2003) >= 0
    assert loaded.items.externals(range(loaded.n_items)) == model.items.externals(range(model.n_items))
    assert loaded.metadata["run_id"] == "abc" and loaded.metadata["n_users"] == DATA.n_users
    assert loaded.report.n_iter == model.report.n_iter

    def answers(m):
        include = [None, [1, 2, 3], *[None] * (DATA.n_users - 2)]
        items, values = histories(DATA)
        return [
            *m.recommend(ALL_USERS, 10),
            *m.recommend(ALL_USERS, 5, exclude_seen=False, include=include),
            *m.similar_items(np.arange(m.n_items), 4),
            m.score(ALL_USERS, np.tile(np.arange(m.n_items), (DATA.n_users, 1))),
            m.fold_in(items[:5], values[:5]),
            *m.recommend_popular(2, 5, seen=[[0], [1]]),
        ]

    for got, want in zip(answers(loaded), answers(model), strict=True):
        np.testing.assert_array_equal(got, want)

    loaded.save(tmp_path / "again")  # re-saving a loaded model keeps working
    np.testing.assert_array_equal(
        NMFRecommender.load(tmp_path / "again").recommend(ALL_USERS, 5)[0], model.recommend(ALL_USERS, 5)[0]
    )


def test_save_before_fit_is_refused(tmp_path):
    with pytest.raises(RuntimeError, match="fit the model before saving"):
        NMFRecommender().save(tmp_path / "m")


def test_a_confidence_model_round_trips_with_its_idf_and_penalty(tmp_path):
    m = fit(LOW_RANK, n_components=4, confidence="idf", confidence_sweeps=4)
    assert m.confidence_reg == pytest.approx(0.7 * np.sqrt(LOW_RANK.n_users))  # "auto"
    assert [sweep for sweep, _ in m.report.refinement] == [1, 2, 3, 4]
    m.save(tmp_path / "m")
    loaded = NMFRecommender.load(tmp_path / "m")
    assert loaded.params.confidence == "idf" and loaded.confidence_reg == m.confidence_reg
    np.testing.assert_array_equal(loaded.confidence_idf, m.confidence_idf)
    assert loaded.report.refinement == m.report.refinement
    items, values = histories(LOW_RANK)
    np.testing.assert_array_equal(loaded.fold_in(items[:7], values[:7]), m.fold_in(items[:7], values[:7]))
    np.testing.assert_array_equal(loaded.recommend(np.arange(7), 5)[0], m.recommend(np.arange(7), 5)[0])


def test_the_confidence_refinement_changes_the_factors_and_plain_nmf_has_none():
    plain = fit(LOW_RANK, n_components=4, confidence="none")
    refined = fit(LOW_RANK, n_components=4)  # the default: refined
    assert plain.confidence_idf is None and plain.report.refinement == []
    assert not np.allclose(plain.user_factors, refined.user_factors)
    assert (refined.user_factors >= 0).all() and (refined.item_factors >= 0).all()


def _saved_without(model, tmp_path, params=(), metadata_keys=()) -> NMFRecommender:
    """``model`` saved, then loaded from an artifact lacking these params and metadata keys (an older format)."""
    from timbral.artifact import load_artifact, save_artifact

    model.save(tmp_path / "new")
    arrays, metadata = load_artifact(tmp_path / "new")
    for key in params:
        del metadata["params"][key]
    for key in metadata_keys:
        del metadata[key]
    save_artifact(tmp_path / "old", arrays, metadata)
    return NMFRecommender.load(tmp_path / "old")


def test_an_artifact_saved_before_the_refinement_existed_loads_as_plain_nmf(tmp_path):
    m = fit(LOW_RANK, n_components=4, confidence="none")
    loaded = _saved_without(m, tmp_path, ("confidence", "confidence_alpha", "confidence_reg", "confidence_sweeps"),
                            ("confidence_reg",))
    assert loaded.params.confidence == "none" and loaded.confidence_idf is None
    items, values = histories(LOW_RANK)
    np.testing.assert_array_equal(loaded.fold_in(items[:5], values[:5]), m.fold_in(items[:5], values[:5]))


def test_a_refined_artifact_saved_before_the_shift_existed_folds_in_without_one(tmp_path):
    m = fit(LOW_RANK, n_components=4, max_iter=1000, tol=1e-7, confidence_shift=0.0)
    loaded = _saved_without(m, tmp_path, ("confidence_shift",))
    assert loaded.params.confidence == "idf" and loaded.params.confidence_shift == 0.0
    assert_fold_in_reproduces_training_users(loaded, LOW_RANK, vector_rtol=1e-2)
