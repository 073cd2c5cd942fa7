"""How each endpoint is answered: ids ↔ indices, the popularity fallback, exclusions, the cache, the model calls.

Kept apart from the BentoML classes so it can be driven in-process with any model client. The model service
speaks indices; this module owns the ids. The batched path stays one matrix product and one partial sort:
``exclude_items`` asks the model for ``k + len(exclude)`` candidates and filters here; ``include_items`` scores
just those items. Unknown users get the most popular items (``strategy: "popular"``), never an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel

from service.cache import ResponseCache
from service.catalog import Catalog
from service.logs import annotate
from service.metrics import count_strategy
from service.model_client import ModelClient
from service.schemas import (
    BatchRecommendRequest,
    BatchRecommendResponse,
    HistoryRequest,
    HistoryResponse,
    RecommendRequest,
    RecommendResponse,
    ScoreRequest,
    ScoreResponse,
    SimilarItemsRequest,
    SimilarItemsResponse,
    error_body,
)

PERSONALIZED, POPULAR = "personalized", "popular"
# route → (request model, response model, Answerer method). The BentoML API methods (service.service) and the
# direct lane in front of them (service.direct_answers) both answer through ``Answerer.respond`` and this table.
ENDPOINTS: dict[str, tuple[type[BaseModel], type[BaseModel], str]] = {
    "/recommend": (RecommendRequest, RecommendResponse, "recommend"),
    "/recommend/batch": (BatchRecommendRequest, BatchRecommendResponse, "recommend_batch"),
    "/recommend/history": (HistoryRequest, HistoryResponse, "history"),
    "/similar-items": (SimilarItemsRequest, SimilarItemsResponse, "similar"),
    "/score": (ScoreRequest, ScoreResponse, "score"),
}


class NotFoundError(LookupError):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.message, self.field = message, field


class Answerer:
    def __init__(self, catalog: Catalog, model: ModelClient, cache: ResponseCache) -> None:
        self.catalog, self.model, self.cache = catalog, model, cache

    async def respond(self, route: str, request: BaseModel) -> tuple[int, BaseModel | dict[str, Any]]:
        """``(200, response model)`` for a validated request to ``route``, or ``(404, error body)`` when
        /similar-items names an unknown item."""
        _, response, method = ENDPOINTS[route]
        try:
            return 200, response.model_validate(await getattr(self, method)(request))
        except NotFoundError as exc:
            return 404, error_body(exc.message, exc.field, "not_found")

    # ---------------------------------------------------------------------------------------- helpers
    def _items(self, indices: Sequence[int], scores: Sequence[float]) -> list[dict[str, Any]]:
        ids = self.catalog.items.externals(np.asarray(indices, dtype=np.int64)) if len(indices) else []
        return [{"item_id": i, "score": float(s)} for i, s in zip(ids, scores, strict=True)]

    def _known_items(self, ids: Sequence[Any]) -> list[int]:
        return [int(i) for i in self.catalog.items.indices(ids) if i >= 0] if ids else []

    async def _cached(self, endpoint: str, request: dict[str, Any], compute) -> dict[str, Any]:
        cache = self.cache
        key = cache.key(self.catalog.cache_namespace, endpoint, request)
        hit = await cache.get(key, endpoint)
        if hit is not None:
            hit["cached"] = True
            annotate(cache="hit", strategy=hit.get("strategy"))
            return hit
        answer = await compute()
        answer["cached"] = False
        await cache.set(key, answer)
        annotate(cache="miss" if cache.state == "up" else cache.state, strategy=answer.get("strategy"))
        return answer

    # ---------------------------------------------------------------------------------------- /recommend
    async def recommend(self, req: RecommendRequest) -> dict[str, Any]:
        async def compute():
            return await self._recommend_one(req)

        return await self._cached("recommend", req.model_dump(), compute)

    async def _recommend_one(self, req: RecommendRequest) -> dict[str, Any]:
        cat, k = self.catalog, req.k
        u = cat.users.index(req.user_id)
        exclude = set(self._known_items(req.exclude_items))
        if req.include_items is not None:
            candidates = [i for i in self._known_items(req.include_items) if i not in exclude]
            if u < 0:
                items, scores = cat.popular_among(candidates, k)
            elif candidates:
                ranked = await self.model.call("rank_items", user_index=u, item_indices=candidates, n=k,
                                               exclude_seen=req.exclude_seen)
                items, scores = _columns(ranked)
            else:
                items, scores = [], []
        elif u < 0:
            items, scores = cat.popular(k, exclude)
        else:
            rows = np.array([[u, k + len(exclude), int(req.exclude_seen)]], dtype=np.int64)
            items, scores = _columns((await self.model.rows("recommend", rows))[0], exclude, k)
        strategy = PERSONALIZED if u >= 0 else POPULAR
        count_strategy("recommend", strategy)
        return {"user_id": cat.users.external(u) if u >= 0 else req.user_id, "items": self._items(items, scores),
                "model_version": cat.version, "strategy": strategy}

    # ---------------------------------------------------------------------------------- /recommend/batch
    async def recommend_batch(self, req: BatchRecommendRequest) -> dict[str, Any]:
        """One result per user, in order. Shares cache entries with /recommend (same normalised request)."""
        cat, k = self.catalog, req.k
        singles = [RecommendRequest(user_id=uid, k=k, exclude_seen=req.exclude_seen) for uid in req.user_ids]
        keys = [self.cache.key(cat.cache_namespace, "recommend", s.model_dump()) for s in singles]
        results: list[dict[str, Any] | None] = await self.cache.get_many(keys, "recommend/batch")
        for r in results:
            if r is not None:
                r["cached"] = True
        missing = [j for j, r in enumerate(results) if r is None]
        if missing:
            indices = cat.users.indices([req.user_ids[j] for j in missing])
            known = [(j, int(u)) for j, u in zip(missing, indices.tolist(), strict=True) if u >= 0]
            fresh: dict[int, dict[str, Any]] = {}
            if known:
                rows = np.array([[u, k, int(req.exclude_seen)] for _, u in known], dtype=np.int64)
                answers = await self.model.rows("recommend", rows)
                for (j, u), arr in zip(known, answers, strict=True):
                    items, scores = _columns(arr)
                    fresh[j] = {"user_id": cat.users.external(u), "items": self._items(items, scores),
                                "model_version": cat.version, "strategy": PERSONALIZED, "cached": False}
            popular = None
            for j in missing:
                if j not in fresh:
                    popular = popular or self._items(*cat.popular(k))
                    fresh[j] = {"user_id": req.user_ids[j], "items": popular, "model_version": cat.version,
                                "strategy": POPULAR, "cached": False}
            for j, answer in fresh.items():
                results[j] = answer
            await self.cache.set_many([(keys[j], fresh[j]) for j in missing])
            count_strategy("recommend/batch", PERSONALIZED, len(known))
            count_strategy("recommend/batch", POPULAR, len(missing) - len(known))
        annotate(users=len(singles), cache_hits=len(singles) - len(missing))
        return {"results": results, "model_version": cat.version}

    # -------------------------------------------------------------------------------- /recommend/history
    async def history(self, req: HistoryRequest) -> dict[str, Any]:
        async def compute():
            cat, k = self.catalog, req.k
            ids = [h.item_id for h in req.items]
            indices = cat.items.indices(ids).tolist() if ids else []
            unknown = list(dict.fromkeys(i for i, x in zip(ids, indices, strict=True) if x < 0))
            known = [(x, h.value) for x, h in zip(indices, req.items, strict=True) if x >= 0]
            items: list[int] = []
            scores: list[float] = []
            if known:
                answer = await self.model.call("fold_in", item_indices=[x for x, _ in known],
                                               values=[v for _, v in known], n=k)
                items, scores = _columns(answer)
            strategy = PERSONALIZED if items else POPULAR
            if not items:
                items, scores = cat.popular(k, {x for x, _ in known})
            count_strategy("recommend/history", strategy)
            return {"items": self._items(items, scores), "unknown_items": unknown, "model_version": cat.version,
                    "strategy": strategy}

        return await self._cached("recommend/history", req.model_dump(), compute)

    # ------------------------------------------------------------------------------------ /similar-items
    async def similar(self, req: SimilarItemsRequest) -> dict[str, Any]:
        cat = self.catalog
        i = cat.items.index(req.item_id)
        if i < 0:
            raise NotFoundError(f"item {req.item_id!r} is not known to model version {cat.version}", "item_id")

        async def compute():
            rows = np.array([[i, req.k]], dtype=np.int64)
            items, scores = _columns((await self.model.rows("similar", rows))[0])
            return {"item_id": cat.items.external(i), "items": self._items(items, scores),
                    "model_version": cat.version}

        return await self._cached("similar-items", req.model_dump(), compute)

    # --------------------------------------------------------------------------------------------- /score
    async def score(self, req: ScoreRequest) -> dict[str, Any]:
        """Known user: the model's scores. Unknown user: popularity counts (what /recommend ranks them by)."""

        async def compute():
            cat = self.catalog
            u = cat.users.index(req.user_id)
            indices = cat.items.indices(req.item_ids)
            if u >= 0:
                values = await self.model.call("score", user_index=u, item_indices=indices.tolist())
            else:
                values = [float(cat.popularity[i]) if i >= 0 else None for i in indices.tolist()]
            strategy = PERSONALIZED if u >= 0 else POPULAR
            count_strategy("score", strategy)
            out = [{"item_id": cat.items.external(i) if i >= 0 else given, "score": v}
                   for given, i, v in zip(req.item_ids, indices.tolist(), values, strict=True)]
            return {"user_id": cat.users.external(u) if u >= 0 else req.user_id, "scores": out,
                    "model_version": cat.version, "strategy": strategy}

        return await self._cached("score", req.model_dump(), compute)


def _columns(arr, exclude: set[int] | None = None, k: int | None = None) -> tuple[list[int], list[float]]:
    """Split an ``m × 2`` [item index, score] answer into lists, dropping ``exclude`` and keeping ``k``."""
    arr = np.asarray(arr, dtype=np.float64).reshape(-1, 2)
    items = arr[:, 0].astype(np.int64).tolist()
    scores = arr[:, 1].tolist()
    if exclude:
        kept = [(i, s) for i, s in zip(items, scores, strict=True) if i not in exclude]
        items, scores = [i for i, _ in kept], [s for _, s in kept]
    if k is not None:
        items, scores = items[:k], scores[:k]
    return items, scores
