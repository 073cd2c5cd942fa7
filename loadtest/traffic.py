"""Realistic client traffic for the served API: who asks, for what, and the request bodies.

Every body is built through the service's own request models (``service.schemas``) and dumped from them, so a
field the API renames or a limit it tightens breaks the load test at once instead of silently sending 400s.

Ids come from the served model itself: ``Catalog.load`` reads the user/item ids and the item popularity from
the model artifact (the BentoML store directory ``$BENTOML_HOME/models/<name>/<version>`` or an MLflow
download of ``artifacts/timbral``), after verifying its checksums. Users are drawn with a Zipf-like skew over
the known users (a few heavy listeners, a long tail) plus a share of users the model has never seen; items are
drawn by their popularity in the training data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ENDPOINTS = {
    "recommend": "/recommend",
    "similar": "/similar-items",
    "history": "/recommend/history",
    "batch": "/recommend/batch",
    "score": "/score",
}
DEFAULT_MIX = {"recommend": 70, "similar": 10, "history": 8, "batch": 7, "score": 5}
UNKNOWN_PREFIX = "loadtest-new-"


def parse_mix(text: str | None) -> dict[str, float]:
    """``"recommend=70,similar=10"`` → weights; endpoints not named get 0. Empty or None: the default mix."""
    if not text:
        return dict(DEFAULT_MIX)
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, weight = part.strip().partition("=")
        if not sep or name not in ENDPOINTS:
            raise ValueError(f"bad mix entry {part!r}: use name=weight with name in {', '.join(ENDPOINTS)}")
        mix[name] = float(weight)
        if mix[name] < 0:
            raise ValueError(f"mix weight of {name} must be >= 0")
    if sum(mix.values()) <= 0:
        raise ValueError("the mix needs at least one positive weight")
    return mix


@dataclass
class TrafficConfig:
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    unknown_share: float = 0.05  # of /recommend, /score and batch users
    zipf: float = 1.05  # exponent of the user popularity (rank r asks with weight (r + 1) ** -zipf)
    ks: tuple[int, ...] = (5, 10, 10, 10, 20, 50)  # k drawn uniformly from these
    batch_users: tuple[int, int] = (2, 20)
    history_items: tuple[int, int] = (3, 30)
    score_items: tuple[int, int] = (3, 20)
    exclude_share: float = 0.1  # /recommend requests that exclude a few of the popular items

    def __post_init__(self) -> None:
        if not 0.0 <= self.unknown_share <= 1.0:
            raise ValueError(f"unknown_share must be within 0..1, got {self.unknown_share}")
        if self.zipf < 0:
            raise ValueError(f"zipf must be >= 0, got {self.zipf}")


@dataclass
class Ids:
    """The served model's ids (Python ints or strs, as the API returns them) and item popularity."""

    users: list[Any]
    items: list[Any]
    item_popularity: np.ndarray

    @classmethod
    def from_model_dir(cls, directory: str | Path) -> Ids:
        from service.catalog import Catalog

        cat = Catalog.load(directory)
        return cls(cat.users.externals(np.arange(len(cat.users))), cat.items.externals(np.arange(len(cat.items))),
                   np.asarray(cat.popularity, dtype=np.float64))


def _cdf(weights: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(weights, dtype=np.float64)
    return cdf / cdf[-1]


class Traffic:
    """Draws requests: ``next()`` → ``(endpoint name, path, JSON body)``."""

    def __init__(self, ids: Ids, config: TrafficConfig | None = None, seed: int = 0) -> None:
        if not ids.users or not ids.items:
            raise ValueError("the model has no users or no items")
        self.ids, self.config = ids, config or TrafficConfig()
        self.rng = np.random.default_rng(seed)
        # a random permutation decides who the heavy users are; rank r asks with weight (r + 1) ** -zipf
        self._user_order = self.rng.permutation(len(ids.users))
        self._user_cdf = _cdf((np.arange(len(ids.users)) + 1.0) ** -self.config.zipf)
        self._item_cdf = _cdf(np.asarray(ids.item_popularity, dtype=np.float64) + 1.0)
        names = [n for n, w in self.config.mix.items() if w > 0]
        self._names = names
        self._name_cdf = _cdf(np.array([self.config.mix[n] for n in names]))
        self._unknown = 0

    # ----------------------------------------------------------------------------------------- draws
    def user(self, allow_unknown: bool = True) -> Any:
        if allow_unknown and self.rng.random() < self.config.unknown_share:
            self._unknown += 1
            return f"{UNKNOWN_PREFIX}{self._unknown}-{int(self.rng.integers(1 << 30))}"
        rank = int(np.searchsorted(self._user_cdf, self.rng.random(), side="right"))
        return self.ids.users[int(self._user_order[min(rank, len(self._user_order) - 1)])]

    def items(self, n: int) -> list[Any]:
        """``n`` distinct items, drawn by popularity."""
        n = min(n, len(self.ids.items))
        picks = np.searchsorted(self._item_cdf, self.rng.random(2 * n + 4), side="right")
        unique = list(dict.fromkeys(np.minimum(picks, len(self.ids.items) - 1).tolist()))[:n]
        return [self.ids.items[i] for i in unique]

    def k(self) -> int:
        return int(self.config.ks[int(self.rng.integers(len(self.config.ks)))])

    def _between(self, bounds: tuple[int, int]) -> int:
        return int(self.rng.integers(bounds[0], bounds[1] + 1))

    # -------------------------------------------------------------------------------------- requests
    def recommend(self) -> dict[str, Any]:
        from service.schemas import RecommendRequest

        fields: dict[str, Any] = {"user_id": self.user(), "k": self.k()}
        if self.rng.random() < self.config.exclude_share:
            fields["exclude_items"] = self.items(3)
        return _dump(RecommendRequest(**fields))

    def similar(self) -> dict[str, Any]:
        from service.schemas import SimilarItemsRequest

        return _dump(SimilarItemsRequest(item_id=self.items(1)[0], k=self.k()))

    def history(self) -> dict[str, Any]:
        from service.schemas import HistoryItem, HistoryRequest

        items = self.items(self._between(self.config.history_items))
        plays = self.rng.geometric(0.3, len(items)).tolist()
        return _dump(HistoryRequest(items=[HistoryItem(item_id=i, value=float(v)) for i, v in zip(items, plays, strict=True)],
                                    k=self.k()))

    def batch(self) -> dict[str, Any]:
        from service.schemas import BatchRecommendRequest

        users = [self.user() for _ in range(self._between(self.config.batch_users))]
        return _dump(BatchRecommendRequest(user_ids=users, k=self.k()))

    def score(self) -> dict[str, Any]:
        from service.schemas import ScoreRequest

        return _dump(ScoreRequest(user_id=self.user(), item_ids=self.items(self._between(self.config.score_items))))

    def next(self) -> tuple[str, str, dict[str, Any]]:
        name = self._names[int(np.searchsorted(self._name_cdf, self.rng.random(), side="right"))]
        return name, ENDPOINTS[name], getattr(self, name)()


def _dump(request) -> dict[str, Any]:
    """The JSON body of a validated request model: only the fields that were set (defaults stay server-side)."""
    return request.model_dump(mode="json", exclude_unset=True)


def recommend_bodies(ids: Ids, n: int, *, k: int = 10, seed: int = 0, zipf: float = 1.05,
                     nonce: str | None = None) -> list[bytes]:
    """``n`` encoded /recommend bodies for known users only (Zipf-skewed), for the benchmark's fixed load.

    ``nonce`` adds a never-known item id to ``exclude_items`` (``nonce-<i>``): every body is then a distinct
    cache key while the model does exactly the same work (unknown items are dropped before the model call).
    """
    import json

    from service.schemas import RecommendRequest

    traffic = Traffic(ids, TrafficConfig(unknown_share=0.0, zipf=zipf), seed=seed)
    out = []
    for i in range(n):
        fields: dict[str, Any] = {"user_id": traffic.user(allow_unknown=False), "k": k}
        if nonce is not None:
            fields["exclude_items"] = [f"{nonce}-{i}"]
        out.append(json.dumps(_dump(RecommendRequest(**fields)), separators=(",", ":")).encode())
    return out


def batch_bodies(ids: Ids, n: int, users_per_request: int, *, k: int = 10, seed: int = 0, zipf: float = 1.05) -> list[bytes]:
    """``n`` encoded /recommend/batch bodies of ``users_per_request`` known users each (Zipf-skewed)."""
    import json

    from service.schemas import BatchRecommendRequest

    traffic = Traffic(ids, TrafficConfig(unknown_share=0.0, zipf=zipf), seed=seed)
    return [json.dumps(_dump(BatchRecommendRequest(user_ids=[traffic.user(allow_unknown=False) for _ in range(users_per_request)],
                                                   k=k)), separators=(",", ":")).encode() for _ in range(n)]


def mlflow_bodies(ids: Ids, n: int, *, k: int = 10, seed: int = 0, zipf: float = 1.05) -> list[bytes]:
    """The same users as ``recommend_bodies`` (same seed) in ``mlflow models serve``'s /invocations format."""
    import json

    traffic = Traffic(ids, TrafficConfig(unknown_share=0.0, zipf=zipf), seed=seed)
    return [json.dumps({"dataframe_split": {"columns": ["user_id"], "data": [[traffic.user(allow_unknown=False)]]},
                        "params": {"k": k}}, separators=(",", ":")).encode() for _ in range(n)]
