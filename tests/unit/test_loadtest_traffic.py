"""The load test's traffic: ids read from a model artifact, bodies the API's own schemas accept, the skew."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from loadtest.traffic import (
    DEFAULT_MIX,
    ENDPOINTS,
    UNKNOWN_PREFIX,
    Ids,
    Traffic,
    TrafficConfig,
    mlflow_bodies,
    parse_mix,
    recommend_bodies,
)
from service.schemas import (
    BatchRecommendRequest,
    HistoryRequest,
    RecommendRequest,
    ScoreRequest,
    SimilarItemsRequest,
)
from tests.e2e.helpers import fit_small_model

SCHEMA = {"recommend": RecommendRequest, "similar": SimilarItemsRequest, "history": HistoryRequest,
          "batch": BatchRecommendRequest, "score": ScoreRequest}


@pytest.fixture(scope="module")
def ids(tmp_path_factory) -> Ids:
    model = fit_small_model(n_users=80, n_items=60, seed=2)
    directory = model.save(tmp_path_factory.mktemp("artifact") / "timbral")
    return Ids.from_model_dir(directory)


def test_ids_come_from_the_artifact(ids):
    assert len(ids.users) == 80 and len(ids.items) == 60
    assert all(isinstance(u, str) and u.startswith("u") for u in ids.users)
    assert ids.item_popularity.shape == (60,) and ids.item_popularity.sum() > 0


def test_every_body_validates_against_the_service_schema(ids):
    traffic = Traffic(ids, seed=1)
    seen = Counter()
    for _ in range(400):
        name, path, body = traffic.next()
        assert path == ENDPOINTS[name]
        SCHEMA[name].model_validate(json.loads(json.dumps(body)))  # what the server will parse
        seen[name] += 1
    assert set(seen) == set(DEFAULT_MIX)
    assert seen["recommend"] > seen["similar"] > 0  # 70 % vs 10 %


def test_users_are_skewed_and_some_are_unknown(ids):
    traffic = Traffic(ids, TrafficConfig(unknown_share=0.2, zipf=1.2), seed=3)
    users = [traffic.user() for _ in range(4000)]
    unknown = [u for u in users if str(u).startswith(UNKNOWN_PREFIX)]
    assert 0.15 < len(unknown) / len(users) < 0.25
    assert len(set(unknown)) == len(unknown)  # each unknown user is new
    counts = Counter(u for u in users if u not in unknown).most_common()
    assert counts[0][1] > 10 * counts[-1][1]  # a heavy head and a long tail
    assert {u for u, _ in counts} <= set(ids.users)


def test_items_are_distinct_known_and_follow_popularity(ids):
    traffic = Traffic(ids, seed=4)
    picks = traffic.items(10)
    assert len(picks) == len(set(picks)) == 10 and set(picks) <= set(ids.items)
    drawn = Counter(i for _ in range(3000) for i in traffic.items(1))
    most_popular = ids.items[int(np.argmax(ids.item_popularity))]
    assert drawn[most_popular] >= np.median(list(drawn.values()))


def test_parse_mix():
    assert parse_mix("") == DEFAULT_MIX
    assert parse_mix("recommend=1,score=3") == {"recommend": 1.0, "score": 3.0}
    for bad in ("recommend", "nope=1", "recommend=-1", "recommend=0"):
        with pytest.raises(ValueError):
            parse_mix(bad)


def test_a_mix_of_one_endpoint_only_sends_that(ids):
    traffic = Traffic(ids, TrafficConfig(mix=parse_mix("similar=1")), seed=5)
    assert {traffic.next()[0] for _ in range(50)} == {"similar"}


def test_benchmark_bodies(ids):
    plain = recommend_bodies(ids, 50, seed=1)
    parsed = [json.loads(b) for b in plain]
    assert all(set(p) == {"user_id", "k"} and p["k"] == 10 and p["user_id"] in ids.users for p in parsed)
    nonced = [json.loads(b) for b in recommend_bodies(ids, 50, seed=1, nonce="x")]
    assert [p["user_id"] for p in nonced] == [p["user_id"] for p in parsed]
    assert len({p["exclude_items"][0] for p in nonced}) == 50  # every body its own cache key
    peer = [json.loads(b) for b in mlflow_bodies(ids, 50, seed=1)]
    assert [p["dataframe_split"]["data"][0][0] for p in peer] == [p["user_id"] for p in parsed]  # same users
    assert peer[0]["dataframe_split"]["columns"] == ["user_id"] and peer[0]["params"] == {"k": 10}


def test_config_validation():
    with pytest.raises(ValueError):
        TrafficConfig(unknown_share=1.5)
    with pytest.raises(ValueError):
        TrafficConfig(zipf=-1)
