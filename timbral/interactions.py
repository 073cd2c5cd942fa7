"""Validated interactions as a sparse user × item matrix, with the id maps both ways.

Ids are opaque: integers and strings are both accepted and kept as their canonical string form internally
(``42`` and ``"42"`` are the same id). ``id_kind`` remembers whether every id was an integer, so answers can be
given back in the type the data used. Duplicate (user, item) rows are combined by summing their values
(play counts add up); the latest timestamp of a combined pair is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


class InteractionError(ValueError):
    """Interactions that cannot be used, with the place and the reason in the message."""


@dataclass(frozen=True)
class IdMap:
    """Position ↔ id. ``ids[i]`` is the id of index ``i``; ``kind`` is ``"int"`` or ``"str"``."""

    ids: np.ndarray
    kind: str = "str"

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", np.asarray(self.ids).astype(str))
        object.__setattr__(self, "_index", {v: i for i, v in enumerate(self.ids.tolist())})

    def __len__(self) -> int:
        return int(self.ids.size)

    def index(self, key: object) -> int:
        """Index of ``key`` or -1 if unknown."""
        return self._index.get(canonical_id(key), -1)  # type: ignore[attr-defined]

    def indices(self, keys) -> np.ndarray:
        lookup = self._index  # type: ignore[attr-defined]
        return np.fromiter((lookup.get(canonical_id(k), -1) for k in keys), dtype=np.int64)

    def external(self, index: int):
        """The id of ``index`` in the type the training data used. Negative indices (-1 means "unknown" or
        padding everywhere in timbral) raise IndexError instead of wrapping around to the last id."""
        index = int(index)
        if not 0 <= index < self.ids.size:
            raise IndexError(f"index {index} out of range 0..{self.ids.size - 1}")
        value = self.ids[index]
        return int(value) if self.kind == "int" else str(value)

    def externals(self, indices) -> list:
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.ids.size):
            raise IndexError(f"index out of range 0..{self.ids.size - 1} (drop -1 padding before mapping to ids)")
        values = self.ids[indices].tolist()
        return [int(v) for v in values] if self.kind == "int" else values


def canonical_id(value: object) -> str:
    """The canonical string form of an id: integers (and integral floats) as digits, strings stripped."""
    if isinstance(value, (bool, np.bool_)):  # np.bool_ is not a bool subclass
        raise InteractionError(f"id {value!r} is a boolean; ids are strings or integers")
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if np.isfinite(value) and float(value).is_integer():
            return str(int(value))
        raise InteractionError(f"id {value!r} is not an integer or a string")
    return str(value).strip()


def canonical_ids(values, what: str = "ids") -> np.ndarray:
    """``canonical_id`` over an array, vectorised for numeric arrays: integral floats become digits, booleans,
    fractional and non-finite floats are refused, strings are stripped."""
    arr = np.asarray(values).ravel()
    kind = arr.dtype.kind
    if kind == "b":
        raise InteractionError(f"{what} are booleans; ids are strings or integers")
    if kind in "iu":
        return arr.astype(str)
    if kind == "f":
        bad = ~np.isfinite(arr)
        bad[~bad] = arr[~bad] != np.floor(arr[~bad])
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InteractionError(f"{what} row {row}: id {arr[row].item()!r} is not an integer or a string")
        if arr.size == 0 or np.abs(arr).max() < 2.0**62:
            return arr.astype(np.int64).astype(str)
    elif kind == "U":
        return np.char.strip(arr)
    values = arr.tolist()
    if kind == "O" and set(map(type, values)) <= {str, np.str_}:  # e.g. a pandas column of strings: no loop
        return np.char.strip(arr.astype(str))
    out = np.empty(arr.shape, dtype=object)
    for row, value in enumerate(values):
        try:
            out[row] = canonical_id(value)
        except InteractionError as exc:
            raise InteractionError(f"{what} row {row}: {exc}") from None
    return out.astype(str)


def factorize_ids(values, what: str = "ids") -> tuple[np.ndarray, np.ndarray]:
    """``(unique canonical ids, code of each row)``; integer ids sort numerically, string ids lexically."""
    arr = np.asarray(values).ravel()
    if arr.dtype.kind in "iu":
        uniq, codes = np.unique(arr, return_inverse=True)
        return uniq.astype(str), codes.astype(np.int64).ravel()
    uniq, codes = np.unique(canonical_ids(arr, what), return_inverse=True)
    codes = codes.astype(np.int64).ravel()
    if uniq.size and id_kind(uniq) == "int":  # digits as text: order them as the numbers they are
        order = np.array(sorted(range(uniq.size), key=lambda i: int(uniq[i])), dtype=np.int64)
        rank = np.empty(order.size, dtype=np.int64)
        rank[order] = np.arange(order.size)
        uniq, codes = uniq[order], rank[codes]
    return uniq, codes


def id_kind(ids: np.ndarray) -> str:
    """``"int"`` when every canonical id is a plain integer literal (no leading zeros), else ``"str"``."""
    ids = np.asarray(ids).astype(str)
    if ids.size == 0:
        return "str"
    for v in ids.tolist():
        body = v[1:] if v.startswith("-") else v
        # str.isdigit() also accepts e.g. "²" and Arabic-Indic digits; int() of those fails or changes the text
        if not (body.isascii() and body.isdigit()) or str(int(v)) != v:
            return "str"
    return "int"


@dataclass(frozen=True)
class Interactions:
    """A combined user × item matrix (CSR, float32) and the id maps; optional last-interaction times."""

    matrix: sp.csr_matrix
    users: IdMap
    items: IdMap
    timestamps: sp.csr_matrix | None = None  # same sparsity as ``matrix``: latest event time (float64 seconds)

    @property
    def n_users(self) -> int:
        return self.matrix.shape[0]

    @property
    def n_items(self) -> int:
        return self.matrix.shape[1]

    @property
    def nnz(self) -> int:
        return int(self.matrix.nnz)

    @classmethod
    def from_arrays(
        cls,
        users,
        items,
        values=None,
        timestamps=None,
        *,
        min_user_interactions: int = 1,
        min_item_interactions: int = 1,
    ) -> Interactions:
        """Build from parallel arrays of ids (canonicalised here, see ``canonical_id``), values ≥ 0 and times.

        Values default to 1. Rows are assumed validated (``training.validate`` names file, row and column);
        here only invariants are re-checked. Users/items with fewer distinct interactions than the minimums
        are dropped, repeatedly, until both minimums hold.
        """
        user_ids, u_idx = factorize_ids(users, "users")
        item_ids, i_idx = factorize_ids(items, "items")
        n = u_idx.size
        if i_idx.size != n:
            raise InteractionError(f"users and items differ in length ({n} vs {i_idx.size})")
        vals = np.ones(n, dtype=np.float64) if values is None else np.asarray(values, dtype=np.float64)
        if vals.size != n:
            raise InteractionError(f"values differ in length from ids ({vals.size} vs {n})")
        if n and (not np.all(np.isfinite(vals)) or vals.min() < 0):
            bad = int(np.flatnonzero(~np.isfinite(vals) | (vals < 0))[0])
            raise InteractionError(f"row {bad}: value {vals[bad]!r} is not a finite number >= 0")
        times = None if timestamps is None else np.asarray(timestamps, dtype=np.float64).ravel()
        if times is not None:
            if times.size != n:
                raise InteractionError(f"timestamps differ in length from ids ({times.size} vs {n})")
            if n and not np.all(np.isfinite(times)):
                bad = int(np.flatnonzero(~np.isfinite(times))[0])
                raise InteractionError(f"row {bad}: timestamp {times[bad]!r} is not a finite number")

        shape = (user_ids.size, item_ids.size)
        matrix = sp.csr_matrix((vals, (u_idx, i_idx)), shape=shape, dtype=np.float64)
        matrix.sum_duplicates()
        ts = None
        if times is not None:
            # latest time per pair: order by time so the last write wins in a COO -> dict collapse
            order = np.argsort(times, kind="stable")
            key = u_idx[order].astype(np.int64) * shape[1] + i_idx[order]
            uniq_key, last_pos = np.unique(key[::-1], return_index=True)
            latest = times[order][::-1][last_pos]
            ts = sp.csr_matrix((latest, (uniq_key // shape[1], uniq_key % shape[1])), shape=shape)
            ts.sum_duplicates()
        # every stored pair counts as an interaction even when its combined value is 0
        result = cls(
            matrix.astype(np.float32),
            IdMap(user_ids, id_kind(user_ids)),
            IdMap(item_ids, id_kind(item_ids)),
            ts,
        )
        return result.filter_min(min_user_interactions, min_item_interactions)

    def filter_min(self, min_user: int = 1, min_item: int = 1) -> Interactions:
        """Drop users and items below the minimum number of distinct interactions (iterated to a fixpoint)."""
        matrix, ts = self.matrix, self.timestamps
        keep_u = np.arange(self.n_users)
        keep_i = np.arange(self.n_items)
        while True:
            binary = matrix.copy()
            binary.data = np.ones_like(binary.data)
            u_ok = np.asarray(binary.sum(axis=1)).ravel() >= max(min_user, 1)
            i_ok = np.asarray(binary.sum(axis=0)).ravel() >= max(min_item, 1)
            if u_ok.all() and i_ok.all():
                break
            matrix = matrix[u_ok][:, i_ok]
            ts = None if ts is None else ts[u_ok][:, i_ok]
            keep_u, keep_i = keep_u[u_ok], keep_i[i_ok]
            if matrix.shape[0] == 0 or matrix.shape[1] == 0:
                break
        if matrix.nnz == 0:
            raise InteractionError(
                f"no interactions left after filtering (min interactions per user {min_user}, per item {min_item})"
            )
        if keep_u.size == self.n_users and keep_i.size == self.n_items:
            return self
        return Interactions(
            matrix.tocsr(),
            IdMap(self.users.ids[keep_u], self.users.kind),
            IdMap(self.items.ids[keep_i], self.items.kind),
            None if ts is None else ts.tocsr(),
        )
