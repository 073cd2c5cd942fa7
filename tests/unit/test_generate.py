"""The synthetic listening generator: determinism, shape, realism, learnable structure, streamed writing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from sklearn.decomposition import NMF

from training.generate import COLUMNS, SPAN, START, build_catalog, generate_listens, write_listens
from training.readers import read_interactions
from training.validate import to_interactions


def listens(*args, **kw) -> pd.DataFrame:
    return pd.concat(generate_listens(*args, **kw), ignore_index=True)


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return listens(2_000, 3_000, 100_000, seed=3)


def test_deterministic_and_independent_of_chunk_size():
    a = listens(500, 800, 20_000, seed=11, chunk_rows=4_096)
    b = listens(500, 800, 20_000, seed=11, chunk_rows=4_096)
    c = listens(500, 800, 20_000, seed=11, chunk_rows=999_999)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, c)
    assert not a.equals(listens(500, 800, 20_000, seed=12))


def test_exact_rows_and_chunk_sizes():
    chunks = list(generate_listens(300, 400, 10_001, chunk_rows=1_000))
    assert [len(c) for c in chunks] == [1_000] * 10 + [1]
    assert sum(len(c) for c in chunks) == 10_001


def test_columns_dtypes_and_ranges(sample):
    assert tuple(sample.columns) == COLUMNS
    assert all(sample[c].dtype == np.int64 for c in COLUMNS)
    assert len(sample) == 100_000
    assert sample["value"].min() >= 1 and sample["value"].median() <= 2 and sample["value"].max() >= 20
    assert START <= sample["timestamp"].min() and sample["timestamp"].max() < START + SPAN
    assert sample["item_id"].between(0, 2_999).all() and sample["user_id"].between(0, 1_999).all()


def test_every_user_appears():
    frame = listens(1_000, 500, 5_000)
    assert frame["user_id"].nunique() == 1_000


def test_each_track_has_one_artist(sample):
    assert (sample.groupby("item_id")["artist_id"].nunique() == 1).all()


def test_long_tail(sample):
    plays = sample.groupby("item_id")["value"].sum().sort_values(ascending=False).to_numpy()
    share = np.cumsum(plays) / plays.sum()
    top_1, top_10 = share[3_000 // 100 - 1], share[3_000 // 10 - 1]  # of a 3,000-track catalogue
    assert top_1 > 0.15 and top_10 > 0.5, (top_1, top_10)  # uniform popularity would give 1% and 10%
    assert np.median(plays) < 0.5 * plays.mean()  # most tracks are rarely played


def test_duplicates_are_moderate(sample):
    distinct = len(sample.drop_duplicates(["user_id", "item_id"]))
    assert 0.6 < distinct / len(sample) < 0.98


def test_users_concentrate_on_few_genres(sample):
    genre = build_catalog(3_000, seed=3).genre_of_items()
    frame = sample.assign(genre=genre.loc[sample["item_id"]].to_numpy())
    active = frame.groupby("user_id").filter(lambda g: len(g) >= 20)

    def top_genre_share(f: pd.DataFrame) -> float:
        return float(f.groupby("user_id")["genre"].agg(lambda s: s.value_counts(normalize=True).iloc[0]).mean())

    shuffled = active.assign(user_id=np.random.default_rng(0).permutation(active["user_id"].to_numpy()))
    real, baseline = top_genre_share(active), top_genre_share(shuffled)
    assert real > 0.5 and real > 2.5 * baseline, (real, baseline)


def test_tastes_are_stable_over_time(sample):
    genre = build_catalog(3_000, seed=3).genre_of_items()
    frame = sample.assign(genre=genre.loc[sample["item_id"]].to_numpy())
    frame["late"] = frame.groupby("user_id")["timestamp"].rank(pct=True) > 0.5
    early = frame[~frame["late"]].groupby("user_id")["genre"].agg(lambda s: s.mode().iloc[0])
    late = frame[frame["late"]].groupby("user_id")["genre"].agg(lambda s: s.mode().iloc[0])
    common = early.index.intersection(late.index)
    assert (early[common] == late[common]).mean() > 0.6


def _recall_at_10(train: pd.DataFrame, test: pd.DataFrame, n_users: int, n_items: int) -> tuple[float, float]:
    """(NMF recall@10, most-popular recall@10) over users with held-out items."""
    matrix = sp.csr_matrix((np.log1p(train["value"]), (train["user_id"], train["item_id"])), shape=(n_users, n_items))
    model = NMF(n_components=24, init="nndsvda", max_iter=150, random_state=0)
    scores = model.fit_transform(matrix) @ model.components_
    popular = np.broadcast_to(np.bincount(train["item_id"], minlength=n_items).astype(float), scores.shape).copy()
    seen = matrix.toarray() > 0
    held = test.groupby("user_id")["item_id"].apply(set)
    recalls = []
    for s in (scores, popular):
        s[seen] = -np.inf
        top = np.argpartition(-s[held.index], 10, axis=1)[:, :10]
        recalls.append(np.mean([len(rel & set(t)) / min(len(rel), 10) for rel, t in zip(held, top, strict=True)]))
    return recalls[0], recalls[1]


@pytest.mark.parametrize("split", ["random", "temporal"])
def test_factorisation_beats_popularity(split):
    frame = listens(1_500, 1_000, 45_000, seed=5)
    pairs = frame.groupby(["user_id", "item_id"], as_index=False).agg(value=("value", "sum"), timestamp=("timestamp", "max"))
    key = np.random.default_rng(1).random(len(pairs)) if split == "random" else pairs["timestamp"].to_numpy(float)
    rank = pd.Series(key).groupby(pairs["user_id"].to_numpy()).rank(pct=True, method="first").to_numpy()
    enough = pairs.groupby("user_id")["item_id"].transform("size").to_numpy() >= 5
    held_out = (rank > 0.8) & enough
    nmf, popular = _recall_at_10(pairs[~held_out], pairs[held_out], 1_500, 1_000)
    assert nmf > 2 * popular, (nmf, popular)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_write_streams_chunks_and_round_trips(tmp_path, suffix):
    out = write_listens(tmp_path / f"listens{suffix}", 4_000, 5_000, 200_000, seed=9, chunk_rows=50_000)
    assert out.exists() and not list(tmp_path.glob("*.partial"))
    if suffix == ".parquet":
        assert pq.ParquetFile(out).metadata.num_row_groups == 4
    raw = read_interactions(out)
    assert raw.fmt == ("parquet" if suffix == ".parquet" else "csv") and len(raw.frame) == 200_000
    expected = listens(4_000, 5_000, 200_000, seed=9)
    assert raw.frame["value"].to_numpy().tolist() == expected["value"].astype(float).tolist()
    assert raw.frame["timestamp"].to_numpy().tolist() == expected["timestamp"].astype(float).tolist()
    assert [int(v) for v in raw.frame["user_id"]] == expected["user_id"].tolist()
    data = to_interactions(raw)
    assert data.n_users == 4_000 and data.matrix.sum() == pytest.approx(expected["value"].sum())


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_users >= 1"):
        next(generate_listens(0, 10, 10))
    with pytest.raises(ValueError, match="n_artists"):
        next(generate_listens(10, 10, 10, n_artists=11))
    with pytest.raises(ValueError, match="expected .parquet or .csv"):
        write_listens(tmp_path / "x.json", 10, 10, 10)
