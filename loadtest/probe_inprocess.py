"""A benchmark probe, not a service to deploy: POST /recommend answered with the scoring *inside* the API process.

``bentoml serve loadtest.probe_inprocess:TimbralProbe`` (``MODEL_TAG`` as for the real bento). It reuses the
real pieces — ``Catalog``, ``Answerer``, the model service's own ``recommend`` method (its class, instantiated
in this process), the response cache — and replaces only the API→model HTTP hop with an in-process queue:
"natural" batching (``service.model_client.Coalescer`` with one call in flight), which dispatches at once when
idle and coalesces whatever queued while the previous batch ran (no waiting window), the product running in a
worker thread so the event loop keeps parsing requests.

It exists to measure what that hop and BentoML's adaptive-batching window cost (see loadtest/README.md); the
number of API workers is ``PROBE_WORKERS`` (default 1), each with its own copy of the factors.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import bentoml
import numpy as np

from service.answers import Answerer
from service.cache import ResponseCache
from service.catalog import Catalog
from service.model_client import ModelClient
from service.model_service import TimbralModel
from service.schemas import RecommendRequest, RecommendResponse
from service.settings import get_settings

_S = get_settings()
MAX_ROWS = _S.max_batch_size


class ThreadedModel:
    """The model service's instance behind ``to_async.recommend``, run in a worker thread (the event loop keeps
    parsing requests meanwhile); ``ModelClient``'s coalescer batches concurrent calls into it."""

    def __init__(self, model) -> None:
        self.model = model
        self.to_async = self  # ModelClient calls model.to_async.<method>(**kwargs)

    async def recommend(self, rows) -> list[np.ndarray]:
        return await asyncio.to_thread(self.model.recommend, rows)


@bentoml.service(name="TimbralProbe", workers=int(os.environ.get("PROBE_WORKERS", "1")), traffic={"timeout": 30},
                 logging={"access": {"enabled": False}}, **_S.bentoml_tracing())  # as the bento's services
class TimbralProbe:
    bento_model = bentoml.models.BentoModel(_S.model_tag)

    def __init__(self) -> None:
        stored = bentoml.models.get(_S.model_tag)
        self.catalog = Catalog.load(stored.path, str(stored.tag), dict(stored.info.labels))
        self.cache = ResponseCache.from_settings(get_settings())
        model = ThreadedModel(TimbralModel())  # the model service's class in this process: same load, same method
        # natural batching: one product at a time, whatever queued meanwhile goes next as one batch
        self.answers = Answerer(self.catalog, ModelClient(lambda: model, max_rows=MAX_ROWS, in_flight=1), self.cache)

    @bentoml.api(route="/recommend", input_spec=RecommendRequest)
    async def recommend(self, **fields: Any) -> RecommendResponse:
        answer = await self.answers.recommend(RecommendRequest.model_validate(fields))
        return RecommendResponse.model_validate(answer)
