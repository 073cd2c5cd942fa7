"""The API service ``Timbral``: JSON endpoints in front of the model service, with a Redis read-through cache.

Serve with ``bentoml serve service:Timbral`` (production mode: the API and the model service run as separate
processes, and the model service batches). POST endpoints are BentoML APIs; the GET endpoints (``/model``,
``/ping``, ``/health``) are a small FastAPI app mounted on the service. All appear in the OpenAPI document
(Swagger UI at ``/``, JSON at ``/docs.json``). A valid POST body is answered by ``service.direct_answers``
ahead of BentoML's route, through the same ``Answerer.respond`` the API methods call (``DIRECT_ANSWERS``).

Errors: invalid input → 400 with ``detail[].loc`` naming the field and ``msg`` the rule (BentoML's validation
errors); unknown item for /similar-items → 404; a body that is not JSON → 415; a body over MAX_REQUEST_SIZE →
413; a client over RATE_LIMIT → 429 with Retry-After (``service.guard``). Redis never causes an error.

``workers=API_WORKERS`` (default 2): the API processes do HTTP, JSON, id mapping and Redis I/O, most of a
request's CPU; the model service (one worker) scores the rows each API worker coalesces
(``service.model_client``).
"""

from __future__ import annotations

from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException
from fastapi import FastAPI
from starlette.responses import JSONResponse

from service.answers import ENDPOINTS, Answerer
from service.cache import ResponseCache
from service.cache_front import CachedAnswers
from service.catalog import Catalog
from service.direct_answers import DirectAnswers
from service.guard import GuardMiddleware, RateLimiter
from service.logs import RequestMiddleware, configure_logging
from service.model_client import ModelClient, model_proxy
from service.model_service import TimbralModel, stored_model
from service.pauses import steady_worker
from service.schemas import (
    BatchRecommendRequest,
    BatchRecommendResponse,
    HealthResponse,
    HistoryRequest,
    HistoryResponse,
    ModelInfo,
    RecommendRequest,
    RecommendResponse,
    ScoreRequest,
    ScoreResponse,
    SimilarItemsRequest,
    SimilarItemsResponse,
)
from service.settings import get_settings

_S = get_settings()
POST_ROUTES = tuple(ENDPOINTS)  # the JSON POST endpoints, in one table (service/answers.py)
GET_ROUTES = ("/model", "/ping", "/health")

ops = FastAPI(title="Timbral operations", docs_url=None, redoc_url=None, openapi_url=None)


@bentoml.service(name="Timbral", workers=_S.api_workers, traffic={"timeout": 30}, logging={"access": {"enabled": False}},
                 **_S.bentoml_tracing())
@bentoml.asgi_app(ops, path="/")
class Timbral:
    """Music recommendations: personalized top-k, popularity fallback, fold-in, similar items, scores."""

    bento_model = bentoml.models.BentoModel(_S.model_tag)
    model = bentoml.depends(TimbralModel)

    def __init__(self) -> None:
        settings = get_settings()
        configure_logging(settings.log_level)
        stored = stored_model(Timbral)
        self.catalog = Catalog.load(stored.path, str(stored.tag), dict(stored.info.labels))
        self.cache = ResponseCache.from_settings(settings)
        self.limiter = RateLimiter.from_settings(settings, self.cache)
        # JSON to the model process when it is one (``bentoml serve``), else the in-process instance
        self.model_client = ModelClient(lambda: model_proxy(TimbralModel) or self.model,
                                        max_rows=settings.max_batch_size, in_flight=settings.model_calls_in_flight,
                                        hold=settings.model_call_hold)
        self.answers = Answerer(self.catalog, self.model_client, self.cache)
        steady_worker()  # garbage-collection pauses out of the latency tail (service/pauses.py)

    def __is_ready__(self) -> bool:
        return self.catalog is not None

    @bentoml.on_shutdown
    async def _close(self) -> None:
        await self.limiter.close()
        await self.cache.close()
        await self.model_client.close()

    async def health(self) -> dict[str, Any]:
        redis = await self.cache.status()
        rate_limit = await self.limiter.status()
        degraded = redis == "down" or rate_limit == "failing-open"
        detail = self.cache.last_error if redis == "down" else self.limiter.link.last_error if degraded else None
        return {"status": "degraded" if degraded else "ok", "model_loaded": self.catalog is not None,
                "model_version": self.catalog.version, "redis": redis, "redis_url": self.cache.url_redacted,
                "rate_limit": rate_limit, "detail": detail}

    async def _respond(self, route: str, fields: dict[str, Any]) -> Any:
        status, body = await self.answers.respond(route, ENDPOINTS[route][0].model_validate(fields))
        return body if status == 200 else JSONResponse(body, status_code=status)

    @bentoml.api(route="/recommend", input_spec=RecommendRequest)
    async def recommend(self, **fields: Any) -> RecommendResponse:
        """Top-k items for a user; unknown users get the most popular items (strategy "popular")."""
        return await self._respond("/recommend", fields)

    @bentoml.api(route="/recommend/batch", input_spec=BatchRecommendRequest)
    async def recommend_batch(self, **fields: Any) -> BatchRecommendResponse:
        """Top-k items for up to MAX_BATCH_USERS users, one result per user in the order given."""
        return await self._respond("/recommend/batch", fields)

    @bentoml.api(route="/recommend/history", input_spec=HistoryRequest)
    async def recommend_history(self, **fields: Any) -> HistoryResponse:
        """Recommendations for a listener the model has never seen, from a listening history (fold-in)."""
        return await self._respond("/recommend/history", fields)

    @bentoml.api(route="/similar-items", input_spec=SimilarItemsRequest)
    async def similar_items(self, **fields: Any) -> SimilarItemsResponse:
        """Items nearest to an item, by the correlation of their predicted scores across users. Unknown item: 404."""
        return await self._respond("/similar-items", fields)

    @bentoml.api(route="/score", input_spec=ScoreRequest)
    async def score(self, **fields: Any) -> ScoreResponse:
        """Score of each item for a user (null for unknown items; popularity counts for unknown users)."""
        return await self._respond("/score", fields)


def _service() -> Timbral:
    return bentoml.get_current_service()


def _front() -> tuple[ResponseCache, str] | None:
    try:
        svc = _service()
    except BentoMLException:  # no service instance yet
        return None
    return svc.cache, svc.catalog.cache_namespace


def _answerer() -> Answerer | None:
    try:
        return _service().answers
    except BentoMLException:  # no service instance yet
        return None


def _limiter() -> RateLimiter | None:
    try:
        return _service().limiter
    except BentoMLException:  # no service instance yet
        return None


# the first middleware added is the outermost: every answer, 413/429 included, is logged and counted
Timbral.add_asgi_middleware(RequestMiddleware, json_paths=POST_ROUTES, known_paths=GET_ROUTES)
Timbral.add_asgi_middleware(GuardMiddleware, max_body=_S.max_request_size, limiter=_limiter,
                            trust_forwarded_for=_S.trust_forwarded_for)
Timbral.add_asgi_middleware(CachedAnswers, get_front=_front)  # repeated bodies answered before routing
if _S.direct_lane:  # valid requests answered before BentoML's routing and IO layer
    Timbral.add_asgi_middleware(DirectAnswers, get_answerer=_answerer)


@ops.get("/model", response_model=ModelInfo, summary="The served model: registry version, run, metrics, size")
async def model_info() -> dict[str, Any]:
    return _service().catalog.info()


@ops.get("/ping", summary="Liveness of the API process")
async def ping() -> dict[str, str]:
    return {"status": "ok"}


@ops.get("/health", response_model=HealthResponse, summary="Model and Redis status (ok or degraded)")
async def health() -> dict[str, Any]:
    return await _service().health()
