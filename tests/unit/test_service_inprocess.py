"""The BentoML service classes driven in-process (no HTTP): their Python methods on a small stored model."""

from __future__ import annotations

import asyncio

import numpy as np


def run(coro):
    return asyncio.run(coro)


def test_model_service_rows_are_ragged_and_match_the_core(stack):
    _, model_svc, core = stack
    rows = np.array([[0, 5, 1], [3, 2, 0], [7, 9, 1]])
    out = model_svc.recommend(rows)
    assert [a.shape for a in out] == [(5, 2), (2, 2), (9, 2)]
    for (u, n, flag), answer in zip(rows.tolist(), out, strict=True):
        items, scores = core.recommend([u], n, exclude_seen=bool(flag))
        assert answer[:, 0].astype(int).tolist() == items[0].tolist()
        np.testing.assert_allclose(answer[:, 1], scores[0], rtol=1e-5)
    # the dispatcher may split a caller's rows across batches and concatenate the parts: lists always fit
    assert [a.shape for a in model_svc.recommend(rows[:1]) + model_svc.recommend(rows[1:])] == [a.shape for a in out]
    assert model_svc.recommend(np.zeros((0, 3), dtype=np.int64)) == []


def test_model_service_other_methods(stack):
    _, model_svc, core = stack
    sim = model_svc.similar(np.array([[2, 4]]))[0]
    items, _ = core.similar_items([2], 4)
    assert sim[:, 0].astype(int).tolist() == items[0].tolist()
    ranked = model_svc.rank_items(user_index=1, item_indices=[5, 3, 9, 3], n=2, exclude_seen=False)
    assert ranked.shape == (2, 2) and set(ranked[:, 0].astype(int)) <= {3, 5, 9}
    assert model_svc.score(user_index=1, item_indices=[5, -1])[1] is None
    assert model_svc.fold_in(item_indices=[1, 2], values=[3.0, 1.0], n=4).shape == (4, 2)
    # no signal → caller falls back (an empty history: under binary weighting, the default, a 0 is a listen)
    assert model_svc.fold_in(item_indices=[], values=[], n=4).shape == (0, 2)


def test_api_recommend_known_and_unknown_users(stack):
    api, _, core = stack
    answer = run(api.recommend(user_id="u2", k=5))
    expected = core.recommend_ids(["u2"], 5)[0]
    assert answer.strategy == "personalized" and answer.model_version == "7" and answer.cached is False
    assert [it.item_id for it in answer.items] == expected["item_ids"]
    unknown = run(api.recommend(user_id="stranger", k=3))
    assert unknown.strategy == "popular" and [it.item_id for it in unknown.items] == core.recommend_ids(["x"], 3)[0]["item_ids"]
    top = expected["item_ids"]
    excluded = run(api.recommend(user_id="u2", k=3, exclude_items=top[:1]))
    assert [it.item_id for it in excluded.items] == top[1:4]


def test_api_batch_history_similar_score(stack):
    api, _, _ = stack
    batch = run(api.recommend_batch(user_ids=["u1", "nobody"], k=2))
    assert [r.strategy for r in batch.results] == ["personalized", "popular"]
    history = run(api.recommend_history(items=[{"item_id": "i3", "value": 2.0}, {"item_id": "zz", "value": 1.0}], k=3))
    assert history.unknown_items == ["zz"] and "i3" not in [it.item_id for it in history.items]
    assert len(run(api.similar_items(item_id="i3", k=3)).items) == 3
    missing = run(api.similar_items(item_id="nope", k=3))
    assert missing.status_code == 404 and b"item_id" in missing.body
    score = run(api.score(user_id="u1", item_ids=["i1", "none"]))
    assert score.scores[1].score is None and score.scores[0].score is not None


def test_api_health_and_model_info(stack):
    api, _, core = stack
    health = run(api.health())
    assert health["status"] == "ok" and health["redis"] == "disabled" and health["model_version"] == "7"
    info = api.catalog.info()
    assert info["registry_version"] == "7" and info["n_items"] == core.n_items and info["n_factors"] == 8
