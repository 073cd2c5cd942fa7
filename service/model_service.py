"""The model service: the NMF recommender behind batchable APIs. It speaks item and user *indices*, not ids.

Its caller is the API service (``service.service.Timbral``), which declares it with ``bentoml.depends``: in
production (``bentoml serve``) this is a process of its own, called over HTTP with JSON
(``service.model_client.ModelHTTP``), where BentoML's adaptive batching gathers concurrent ``recommend``/``similar``
calls into one matrix product and one partial sort; in one process (tests) the API calls the instance directly.

Settings that shape it (read once, at class definition, because BentoML's decorators need them there):

* ``workers=1``: adaptive batching happens per worker, so one worker forms the largest batches and holds one
  copy of the factors; with ``BLAS_THREADS=1`` it uses at most one core and leaves the rest to the API workers
  (``API_WORKERS``). Scale out with replicas, or raise ``BLAS_THREADS`` for large catalogs.
* BentoML's OpenTelemetry middleware is skipped unless ``TRACING_ENABLED`` (``Settings.bentoml_tracing``).
* BentoML's plain-text access log is off: the API service writes one JSON line per request instead.
* JSON only: the API service calls it with its own JSON client (``service.model_client.ModelHTTP``, which keeps
  its connections for the life of the worker); a pickled body
  (BentoML's default between services) is refused with 415 by :class:`RefusePickle`, so nothing that reaches
  this process's socket is ever unpickled.
* ``MAX_BATCH_SIZE`` / ``MAX_LATENCY_MS``: the dispatcher cancels requests it predicts will miss the latency
  budget with 503, so the default budget (1 s) is generous; the API retries one 503.
"""

from __future__ import annotations

import logging
import os

import bentoml
import numpy as np

from service.settings import get_settings

log = logging.getLogger("timbral.service")
_S = get_settings()
# MAX_BATCH_SIZE=1 turns batching off: BentoML refuses max_batch_size=1 on a batchable API, so the row APIs are
# then plain ones (one caller's rows per call; the API service stops coalescing too)
BATCHING = ({"batchable": True, "max_batch_size": _S.max_batch_size, "max_latency_ms": _S.max_latency_ms}
            if _S.max_batch_size > 1 else {})


def _limit_blas_threads(n: int) -> None:
    from threadpoolctl import threadpool_limits

    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    threadpool_limits(limits=n)  # numpy is loaded already: set the live BLAS pools too


def _rows_out(items: np.ndarray, scores: np.ndarray, wanted: np.ndarray) -> list[np.ndarray]:
    """One ``(m × 2)`` float64 array ``[item index, score]`` per row: its own top ``wanted[r]``, padding dropped.

    A list of per-row arrays (not one padded 3-D array) because the dispatcher may split a caller's rows across
    two batches and concatenates the parts along the first axis: rows of a list always fit together.
    """
    out = []
    for r in range(items.shape[0]):
        idx, val = items[r, : int(wanted[r])], scores[r, : int(wanted[r])]
        keep = idx >= 0
        out.append(np.stack([idx[keep].astype(np.float64), val[keep].astype(np.float64)], axis=1))
    return out


class RefusePickle:
    """ASGI middleware: 415 for a request body in BentoML's pickle format (``application/vnd.bentoml+pickle``)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            for name, value in scope.get("headers", ()):
                if name.lower() == b"content-type" and b"pickle" in value.lower():
                    from service.logs import send_json

                    return await send_json(send, 415, {"error": "pickled request bodies are refused; send application/json"})
        await self.app(scope, receive, send)


def stored_model(service):
    """The store model a service instance should load.

    From source this is the class-scope ``BentoModel(MODEL_TAG)``. From a built bento it is the exact model the
    bento was built with (recorded in its ``bento.yaml``), so ``bentoml serve timbral:<version>`` never picks up
    a newer ``timbral-nmf:latest`` from the local store; in a container the bento's own store holds only it.
    """
    declared = service.inner.bento_model  # the class-scope BentoModel reference (unresolved)
    bento = getattr(service, "bento", None)
    if bento is not None:
        for info in bento.info.services:
            if info.name == service.name and info.models:
                tag = str(info.models[0].tag)
                if tag != str(declared.tag):
                    log.info("serving %s, the model bento %s was built with", tag, bento.tag)
                return bentoml.models.get(tag)
    return declared.resolve()


@bentoml.service(
    name="TimbralModel",
    workers=1,
    threads=1,
    traffic={"timeout": 60},
    logging={"access": {"enabled": False}},  # one structured line per request comes from the API service
    **_S.bentoml_tracing(),
)
class TimbralModel:
    """NMF recommender (factors in memory); batchable top-k for known users and similar items."""

    bento_model = bentoml.models.BentoModel(_S.model_tag)

    def __init__(self) -> None:
        from service.logs import configure_logging
        from service.pauses import steady_worker
        from timbral.nmf import NMFRecommender

        settings = get_settings()
        configure_logging(settings.log_level)
        _limit_blas_threads(settings.blas_threads)
        stored = stored_model(TimbralModel)
        self.model = NMFRecommender.load(stored.path)
        log.info("model service loaded %s (%d users, %d items)", stored.tag, self.model.n_users, self.model.n_items)
        steady_worker()  # garbage-collection pauses out of the latency tail (service/pauses.py)

    def __is_ready__(self) -> bool:
        return self.model is not None

    @bentoml.api(**BATCHING)
    def recommend(self, rows: np.ndarray) -> list[np.ndarray]:
        """rows: b × 3 ints ``[user index, n, exclude_seen]`` → per row ``n × 2`` ``[item index, score]``."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        if rows.shape[0] == 0:
            return []
        m = self.model
        users, wanted = rows[:, 0], rows[:, 1]
        seen = [m.seen.indices[m.seen.indptr[u]: m.seen.indptr[u + 1]] if flag else () for u, flag in
                zip(users.tolist(), rows[:, 2].tolist(), strict=True)]
        m._check_indices(users, m.n_users, "user")
        items, scores = m.recommend_vectors(m.user_factors[users], int(wanted.max()), seen=seen)
        return _rows_out(items, scores, wanted)

    @bentoml.api(**BATCHING)
    def similar(self, rows: np.ndarray) -> list[np.ndarray]:
        """rows: b × 2 ints ``[item index, n]`` → per row ``n × 2`` ``[item index, similarity]`` (``NMFRecommender.similar_items``)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
        if rows.shape[0] == 0:
            return []
        items, scores = self.model.similar_items(rows[:, 0], int(rows[:, 1].max()))
        return _rows_out(items, scores, rows[:, 1])

    @bentoml.api
    def rank_items(self, user_index: int, item_indices: list[int], n: int, exclude_seen: bool = True) -> np.ndarray:
        """The user's top ``n`` among ``item_indices`` (the include-list path): ``m × 2`` best first."""
        m = self.model
        items = np.unique(np.asarray(item_indices, dtype=np.int64))
        m._check_indices([user_index], m.n_users, "user")
        m._check_indices(items, m.n_items, "item")
        if exclude_seen and items.size:
            seen = m.seen.indices[m.seen.indptr[user_index]: m.seen.indptr[user_index + 1]]
            items = items[~np.isin(items, seen)]
        if items.size == 0:
            return np.zeros((0, 2))
        scores = m.score_vectors(m.user_factors[[user_index]], items[None, :])[0].astype(np.float64)
        order = np.lexsort((items, -scores))[:n]
        return np.stack([items[order].astype(np.float64), scores[order]], axis=1)

    @bentoml.api
    def score(self, user_index: int, item_indices: list[int]) -> list[float | None]:
        """Scores of ``item_indices`` for the user; ``-1`` entries (unknown items) score ``None``."""
        items = np.asarray(item_indices, dtype=np.int64)
        if items.size and items.max() >= self.model.n_items:
            raise ValueError("item index out of range")
        out = self.model.score([user_index], items[None, :])[0]
        return [None if np.isnan(v) else float(v) for v in out.tolist()]

    @bentoml.api
    def fold_in(self, item_indices: list[int], values: list[float], n: int) -> np.ndarray:
        """Top ``n`` for an unseen listener's history (history items excluded): ``m × 2`` best first.

        Empty (``0 × 2``) when the history carries no signal (its folded-in vector is zero): the caller
        then falls back to popularity.
        """
        m = self.model
        vector = m.fold_in([item_indices], [values])
        if not np.any(vector) or not np.all(np.isfinite(vector)):
            return np.zeros((0, 2))
        items, scores = m.recommend_vectors(vector, n, seen=[item_indices])
        return _rows_out(items, scores, np.array([n]))[0]


TimbralModel.add_asgi_middleware(RefusePickle)
for _api in TimbralModel.apis.values():
    # BentoML otherwise derives each answer's media type from the output's JSON schema, built anew per response
    # (~9 % of the model process's CPU under load); every output here is JSON
    _api.output_spec.media_type = "application/json"
