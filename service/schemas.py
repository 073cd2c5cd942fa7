"""Request and response models of the HTTP API (they make the OpenAPI document at ``/docs.json``).

Ids are strings or integers. Limits that come from settings (``MAX_K``, ``MAX_BATCH_USERS``…) are checked by
validators at request time, so a rejected request is a 400 whose ``detail[].loc`` names the field and whose
``msg`` states the rule — the same shape BentoML gives every validation error. Unknown fields are rejected too
(a misspelt ``userid`` must not silently become a default).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StrictBool, StrictInt, WithJsonSchema
from pydantic import field_validator as _field_validator

from service.settings import get_settings

MAX_ID_LENGTH = 256


def _check_id(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"must be a non-empty string or an integer, got {type(value).__name__}")
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise ValueError("must be a non-empty string or an integer, got an empty string")
        if len(value) > MAX_ID_LENGTH:
            raise ValueError(f"must be at most {MAX_ID_LENGTH} characters long")
    return value


Id = Annotated[
    int | str,
    PlainValidator(_check_id),
    WithJsonSchema({"anyOf": [{"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}, {"type": "integer"}],
                    "description": "an id: a non-empty string or an integer"}),
]
K = Annotated[StrictInt, Field(ge=1, description="number of items wanted, 1..MAX_K (default 500)")]


def _check_k(value: int) -> int:
    limit = get_settings().max_k
    if value > limit:
        raise ValueError(f"must be at most MAX_K = {limit}")
    return value


def _check_len(value: list | None, limit: int, name: str) -> list | None:
    if value is not None and len(value) > limit:
        raise ValueError(f"must have at most {name} = {limit} entries, got {len(value)}")
    return value


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------------------------- requests
class RecommendRequest(_Request):
    """Top-k items for one user. Unknown users get the popularity fallback (``strategy: "popular"``)."""

    user_id: Id
    k: K = 10
    exclude_seen: StrictBool = Field(True, description="leave out items the user interacted with in training")
    exclude_items: list[Id] = Field(default_factory=list, description="never recommend these items")
    include_items: list[Id] | None = Field(None, description="rank only these items (null: the whole catalog)")

    _k = _field_validator("k")(_check_k)

    @_field_validator("exclude_items", "include_items")
    @classmethod
    def _lists(cls, value):
        return _check_len(value, get_settings().max_exclude_items, "MAX_EXCLUDE_ITEMS")


class BatchRecommendRequest(_Request):
    """Top-k items for several users; one result per user, in the order given."""

    user_ids: list[Id] = Field(min_length=1)
    k: K = 10
    exclude_seen: StrictBool = True

    _k = _field_validator("k")(_check_k)

    @_field_validator("user_ids")
    @classmethod
    def _users(cls, value):
        return _check_len(value, get_settings().max_batch_users, "MAX_BATCH_USERS")


class HistoryItem(_Request):
    item_id: Id
    value: float = Field(1.0, ge=0, le=1e9, description="interaction strength, e.g. a play count (0..1e9)")

    @_field_validator("value")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class HistoryRequest(_Request):
    """Recommendations for a listener the model has never seen, from their history (fold-in)."""

    items: list[HistoryItem] = Field(default_factory=list)
    k: K = 10

    _k = _field_validator("k")(_check_k)

    @_field_validator("items")
    @classmethod
    def _items(cls, value):
        return _check_len(value, get_settings().max_history_items, "MAX_HISTORY_ITEMS")


class SimilarItemsRequest(_Request):
    """Nearest items: the correlation, across users, of two items' predicted scores (for a model fitted without
    a shift, the cosine of the item factors); scores from -1 to 1, best first."""

    item_id: Id
    k: K = 10

    _k = _field_validator("k")(_check_k)


class ScoreRequest(_Request):
    """The model's score of each given item for one user."""

    user_id: Id
    item_ids: list[Id] = Field(min_length=1)

    @_field_validator("item_ids")
    @classmethod
    def _items(cls, value):
        return _check_len(value, get_settings().max_exclude_items, "MAX_EXCLUDE_ITEMS")


# ------------------------------------------------------------------------------------------------ responses
Strategy = Literal["personalized", "popular"]
IdOut = int | str


class ScoredItem(BaseModel):
    item_id: IdOut
    score: float


class RecommendResponse(BaseModel):
    user_id: IdOut
    items: list[ScoredItem]
    model_version: str
    strategy: Strategy
    cached: bool = False


class BatchRecommendResponse(BaseModel):
    results: list[RecommendResponse]
    model_version: str


class HistoryResponse(BaseModel):
    items: list[ScoredItem]
    unknown_items: list[IdOut] = Field(description="history items the model does not know (ignored)")
    model_version: str
    strategy: Strategy
    cached: bool = False


class SimilarItemsResponse(BaseModel):
    item_id: IdOut
    items: list[ScoredItem]
    model_version: str
    cached: bool = False


class ItemScore(BaseModel):
    item_id: IdOut
    score: float | None = Field(description="null for an item the model does not know")


class ScoreResponse(BaseModel):
    user_id: IdOut
    scores: list[ItemScore]
    model_version: str
    strategy: Strategy = Field(description="popular: the user is unknown and scores are popularity counts")
    cached: bool = False


class ModelInfo(BaseModel):
    name: str
    bento_model: str
    registry_name: str | None
    registry_version: str | None
    alias: str | None
    run_id: str | None
    trained_at: str | None
    metrics: dict[str, float]
    n_users: int
    n_items: int
    n_factors: int


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    model_loaded: bool
    model_version: str
    redis: Literal["up", "down", "disabled"]
    redis_url: str
    rate_limit: Literal["ok", "failing-open", "disabled"] = Field(
        "disabled", description="failing-open: Redis is unusable and requests pass unlimited")
    detail: str | None = None


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    error: str
    detail: list[ErrorDetail] = []


def error_body(message: str, field: str | None, kind: str) -> dict:
    """A JSON error body shaped like BentoML's validation errors."""
    detail = [{"loc": [field] if field else [], "msg": message, "type": kind}]
    return ErrorResponse(error=message, detail=detail).model_dump()
