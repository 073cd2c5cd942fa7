"""A benchmark probe, not a service to deploy: POST /recommend answered with the scoring *inside* the API process.

``bentoml serve loadtest.probe_inprocess:TimbralProbe`` (``MODEL_TAG`` as for the real bento). It reuses the
real pieces — ``Catalog``, ``Answerer``, the model service's own ``recommend`` method (its class, instantiated
in this process), the response cache — and replaces only the API→model HTTP hop with an in-process queue:
"natural" batching, which dispatches at once when idle and coalesces whatever queued while the previous batch
ran (no waiting window), the product running in a worker thread so the event loop keeps parsing requests.

It exists to measure what that hop and BentoML's adaptive-batching window cost (see loadtest/README.md); the
number of API workers is ``PROBE_WORKERS`` (default 1), each with its own copy of the factors.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import bentoml
import numpy as np

from service.answers import Answerer, ModelClient
from service.cache import ResponseCache
from service.catalog import Catalog
from service.model_service import TimbralModel
from service.schemas import RecommendRequest, RecommendResponse
from service.settings import get_settings

_S = get_settings()
MAX_ROWS = _S.max_batch_size


class NaturalBatcher:
    """``await recommend(rows=...)`` like the model service's client; concurrent calls share one model call."""

    def __init__(self, model) -> None:
        self.model = model
        self.pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self.running = False
        self.to_async = self  # ModelClient calls model.to_async.<method>(**kwargs)

    async def recommend(self, rows) -> list[np.ndarray]:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((np.asarray(rows, dtype=np.int64).reshape(-1, 3), future))
        if not self.running:
            self.running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self.pending:
                take, n = [], 0
                while self.pending and (not take or n + len(self.pending[0][0]) <= MAX_ROWS):
                    take.append(self.pending.pop(0))
                    n += len(take[-1][0])
                rows = np.concatenate([r for r, _ in take])
                try:
                    out = await asyncio.to_thread(self.model.recommend, rows)
                except Exception as exc:  # noqa: BLE001 - hand the failure to every caller of the batch
                    for _, fut in take:
                        fut.set_exception(exc)
                    continue
                at = 0
                for r, fut in take:
                    fut.set_result(out[at:at + len(r)])
                    at += len(r)
        finally:
            self.running = False


@bentoml.service(name="TimbralProbe", workers=int(os.environ.get("PROBE_WORKERS", "1")), traffic={"timeout": 30},
                 logging={"access": {"enabled": False}})
class TimbralProbe:
    bento_model = bentoml.models.BentoModel(_S.model_tag)

    def __init__(self) -> None:
        stored = bentoml.models.get(_S.model_tag)
        self.catalog = Catalog.load(stored.path, str(stored.tag), dict(stored.info.labels))
        self.cache = ResponseCache.from_settings(get_settings())
        model = TimbralModel()  # the model service's class, instantiated in this process: same load, same method
        self.answers = Answerer(self.catalog, ModelClient(lambda: self.batcher), self.cache)
        self.batcher = NaturalBatcher(model)

    @bentoml.api(route="/recommend", input_spec=RecommendRequest)
    async def recommend(self, **fields: Any) -> RecommendResponse:
        answer = await self.answers.recommend(RecommendRequest.model_validate(fields))
        return RecommendResponse.model_validate(answer)
