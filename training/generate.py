"""Synthetic music listening with structure a collaborative-filtering model can learn.

The model behind the data:

- a catalogue of genres (about 30), artists that each belong to one genre, and tracks that each belong to one
  artist; artists are Zipf-popular within their genre and tracks Zipf-popular within their artist, so item
  popularity has a long tail;
- users with a stable taste: one to four favourite genres (weights from a Dirichlet) plus a little exploration
  of the whole catalogue, and a personal activity level (log-normal, so a few users listen a lot);
- each row is one listening session of a track: ``value`` is its play count (geometric, mostly 1–3, sometimes
  many) and ``timestamp`` falls inside the user's active window within one year (2024, UTC).

Output columns: ``user_id``, ``item_id`` (track), ``artist_id``, ``value``, ``timestamp`` (all int64; ids are
opaque integers). The same arguments give the same rows, in the same order, whatever ``chunk_rows`` is: users
are generated in fixed blocks, each with its own seeded random stream, and only re-cut into chunks on output.
Memory is bounded by the per-user arrays plus one block and one chunk.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

START = 1_704_067_200  # 2024-01-01T00:00:00Z
SPAN = 366 * 86_400  # 2024 is a leap year
BLOCK_ROWS = 1 << 18  # rows generated per block of users (independent of chunk_rows)
COLUMNS = ("user_id", "item_id", "artist_id", "value", "timestamp")
MAX_FAVOURITES = 4


@dataclass(frozen=True)
class Catalog:
    """Genres, artists and tracks. Internal track indices are sorted by genre; external ids are shuffled."""

    n_genres: int
    genre_weight: np.ndarray  # global popularity of each genre (sums to 1)
    artist_genre: np.ndarray  # internal artist -> genre
    track_artist: np.ndarray  # internal track -> internal artist
    cum: np.ndarray  # within-genre cumulative track popularity, offset by the genre index (for searchsorted)
    item_ids: np.ndarray  # internal track -> external item id
    artist_ids: np.ndarray  # internal artist -> external artist id

    def genre_of_items(self) -> pd.Series:
        """Genre of each external item id (index: item id)."""
        genres = self.artist_genre[self.track_artist]
        return pd.Series(genres, index=self.item_ids, name="genre").sort_index()

    def sample_tracks(self, genres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One internal track per entry of ``genres``, by popularity within that genre."""
        return np.searchsorted(self.cum, genres + rng.random(genres.size), side="right")


def _zipf_within(groups: np.ndarray, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Weight ``(rank + 1) ** -exponent`` where rank is a random order of each member within its group."""
    order = np.lexsort((rng.random(groups.size), groups))
    sorted_groups = groups[order]
    first = np.searchsorted(sorted_groups, sorted_groups, side="left")
    rank = np.empty(groups.size, dtype=np.int64)
    rank[order] = np.arange(groups.size) - first
    return (rank + 1.0) ** -exponent


def build_catalog(n_items: int, seed: int = 7, n_artists: int | None = None) -> Catalog:
    """The catalogue that ``generate_listens`` samples from (deterministic in its arguments)."""
    rng = np.random.default_rng([seed, 0])
    n_artists = int(n_artists) if n_artists is not None else max(1, n_items // 8)
    if not 1 <= n_artists <= n_items:
        raise ValueError(f"n_artists must be between 1 and n_items ({n_items}), got {n_artists}")
    n_genres = int(min(30, n_artists, max(1, n_items // 25)))
    genre_weight = (np.arange(n_genres) + 1.0) ** -0.8
    genre_weight /= genre_weight.sum()
    size = np.sqrt(genre_weight) / np.sqrt(genre_weight).sum()  # catalogue share: flatter than listening share
    artist_genre = np.concatenate([np.arange(n_genres), rng.choice(n_genres, n_artists - n_genres, p=size)])
    prolific = rng.lognormal(0.0, 1.0, n_artists)
    track_artist = np.concatenate(
        [np.arange(n_artists), rng.choice(n_artists, n_items - n_artists, p=prolific / prolific.sum())]
    )
    track_artist = track_artist[np.argsort(artist_genre[track_artist], kind="stable")]
    artist_pop = _zipf_within(artist_genre, 1.0, rng)
    track_share = _zipf_within(track_artist, 0.9, rng)
    share_total = np.bincount(track_artist, weights=track_share, minlength=n_artists)
    weight = artist_pop[track_artist] * track_share / share_total[track_artist]
    track_genre = artist_genre[track_artist]
    genre_total = np.bincount(track_genre, weights=weight, minlength=n_genres)
    cum = np.empty(n_items)
    bounds = np.searchsorted(track_genre, np.arange(n_genres + 1))
    for g in range(n_genres):
        lo, hi = bounds[g], bounds[g + 1]
        cum[lo:hi] = g + np.cumsum(weight[lo:hi]) / genre_total[g]
        cum[hi - 1] = g + 1.0
    return Catalog(n_genres, genre_weight, artist_genre, track_artist, cum,
                   rng.permutation(n_items).astype(np.int64), rng.permutation(n_artists).astype(np.int64))


@dataclass(frozen=True)
class _Users:
    favourites: np.ndarray  # users x MAX_FAVOURITES genres
    cum_weight: np.ndarray  # users x MAX_FAVOURITES cumulative slot weights
    explore: np.ndarray  # probability of a play outside the favourites
    counts: np.ndarray  # rows per user
    window_start: np.ndarray  # seconds after START
    window_length: np.ndarray
    repeat_p: np.ndarray  # geometric parameter of play counts


def _users(n_users: int, n_interactions: int, catalog: Catalog, seed: int) -> _Users:
    rng = np.random.default_rng([seed, 1])
    favourites = rng.choice(catalog.n_genres, (n_users, MAX_FAVOURITES), p=catalog.genre_weight)
    n_fav = rng.choice(np.arange(1, MAX_FAVOURITES + 1), n_users, p=[0.25, 0.35, 0.25, 0.15])
    weights = rng.dirichlet(np.ones(MAX_FAVOURITES), n_users) * (np.arange(MAX_FAVOURITES) < n_fav[:, None])
    cum_weight = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
    cum_weight[:, -1] = 1.0
    base = 1 if n_interactions >= n_users else 0  # everyone appears once there are enough rows
    activity = rng.lognormal(0.0, 1.0, n_users)
    counts = base + rng.multinomial(n_interactions - base * n_users, activity / activity.sum())
    length = np.maximum(rng.beta(1.5, 1.5, n_users) * SPAN, 14 * 86_400.0)
    start = rng.random(n_users) * (SPAN - length)
    return _Users(favourites.astype(np.int64), cum_weight, rng.beta(1.0, 12.0, n_users), counts.astype(np.int64),
                  start, length, rng.beta(5.0, 3.0, n_users))


def _block(lo: int, hi: int, users: _Users, catalog: Catalog, seed: int, index: int) -> pd.DataFrame:
    rng = np.random.default_rng([seed, 2, index])
    user = np.repeat(np.arange(lo, hi, dtype=np.int64), users.counts[lo:hi])
    n = user.size
    slot = (rng.random(n)[:, None] > users.cum_weight[user]).sum(axis=1)
    genre = users.favourites[user, np.minimum(slot, MAX_FAVOURITES - 1)]
    roam = rng.random(n) < users.explore[user]
    genre[roam] = np.searchsorted(np.cumsum(catalog.genre_weight), rng.random(int(roam.sum())), side="right")
    genre = np.minimum(genre, catalog.n_genres - 1)
    track = np.minimum(catalog.sample_tracks(genre, rng), catalog.cum.size - 1)
    seconds = START + users.window_start[user] + rng.random(n) * users.window_length[user]
    plays = rng.geometric(users.repeat_p[user])
    binge = rng.random(n) < 0.03
    plays[binge] += rng.geometric(0.05, int(binge.sum()))
    order = np.lexsort((seconds, user))
    return pd.DataFrame({
        "user_id": user[order],
        "item_id": catalog.item_ids[track[order]],
        "artist_id": catalog.artist_ids[catalog.track_artist[track[order]]],
        "value": plays[order].astype(np.int64),
        "timestamp": seconds[order].astype(np.int64),
    })


def generate_listens(n_users: int, n_items: int, n_interactions: int, seed: int = 7, *,
                     n_artists: int | None = None, chunk_rows: int = 1_000_000) -> Iterator[pd.DataFrame]:
    """Yield exactly ``n_interactions`` listening rows in chunks of ``chunk_rows`` (the last may be shorter).

    Rows are grouped by user and time-ordered within a user. Duplicate (user, item) rows happen (a track heard
    in several sessions); the core sums them.
    """
    n_users, n_items, n_interactions, chunk_rows = int(n_users), int(n_items), int(n_interactions), int(chunk_rows)
    if n_users < 1 or n_items < 1 or n_interactions < 0 or chunk_rows < 1:
        raise ValueError("need n_users >= 1, n_items >= 1, n_interactions >= 0 and chunk_rows >= 1, got "
                         f"{n_users}, {n_items}, {n_interactions}, {chunk_rows}")
    catalog = build_catalog(n_items, seed, n_artists)
    users = _users(n_users, n_interactions, catalog, seed)
    starts = np.cumsum(users.counts) - users.counts
    cuts = np.flatnonzero(np.diff(starts // BLOCK_ROWS)) + 1
    edges = [0, *cuts.tolist(), n_users]
    pending: list[pd.DataFrame] = []
    have = 0
    for index, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        block = _block(lo, hi, users, catalog, seed, index)
        at = 0
        while at < len(block):
            take = min(chunk_rows - have, len(block) - at)
            pending.append(block.iloc[at:at + take])
            have, at = have + take, at + take
            if have == chunk_rows:
                yield pd.concat(pending, ignore_index=True)
                pending, have = [], 0
    if have:
        yield pd.concat(pending, ignore_index=True)


def write_listens(out: str | os.PathLike[str], n_users: int, n_items: int, n_interactions: int, seed: int = 7,
                  **kw) -> Path:
    """Write ``generate_listens(...)`` to ``out`` (``.parquet`` or ``.csv`` with a header), chunk by chunk.

    The file appears atomically (written aside, then renamed). Extra keywords go to ``generate_listens``.
    """
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise ValueError(f"{out}: unsupported suffix {out.suffix!r}; expected .parquet or .csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    schema = pa.schema([(name, pa.int64()) for name in COLUMNS])
    writer = pq.ParquetWriter(partial, schema) if suffix == ".parquet" else pcsv.CSVWriter(partial, schema)
    try:
        with writer:
            for chunk in generate_listens(n_users, n_items, n_interactions, seed, **kw):
                writer.write_table(pa.Table.from_pandas(chunk, schema=schema, preserve_index=False))
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out
