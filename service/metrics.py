"""Prometheus metrics of our own, exported with BentoML's at ``/metrics``.

``prometheus_client`` is imported on first use, never at module import: BentoML workers set
``PROMETHEUS_MULTIPROC_DIR`` after importing the service module, and a client imported before that would
count in a registry that ``/metrics`` never reads.

* ``timbral_cache_requests_total{endpoint, result}`` — result: hit, miss, error (Redis failed or in back-off),
  disabled.
* ``timbral_recommendations_total{endpoint, strategy}`` — answers by strategy: personalized, or the popular
  fallback.
* ``timbral_responses_total{endpoint, status}`` — every answer of our endpoints by HTTP status code.
* ``timbral_model_call_rows{method}`` — histogram of rows per API→model call: how well concurrent requests
  were coalesced (``service.model_client``) before the model service's own adaptive batching.
* ``timbral_rate_limit_total{result}`` — rate-limit decisions: allowed, limited, failing-open (Redis unusable,
  request let through).
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

_lock = threading.Lock()
_metrics: SimpleNamespace | None = None


def metrics() -> SimpleNamespace:
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                from prometheus_client import Counter, Histogram

                _metrics = SimpleNamespace(
                    cache=Counter("timbral_cache_requests", "Cache lookups by endpoint and result",
                                  ["endpoint", "result"]),
                    strategy=Counter("timbral_recommendations", "Answers by endpoint and strategy",
                                     ["endpoint", "strategy"]),
                    responses=Counter("timbral_responses", "HTTP answers by endpoint and status",
                                      ["endpoint", "status"]),
                    rate_limit=Counter("timbral_rate_limit", "Rate-limit decisions by result", ["result"]),
                    call_rows=Histogram("timbral_model_call_rows", "Rows per API-to-model call", ["method"],
                                        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)),
                )
    return _metrics


def count_cache(endpoint: str, result: str, n: int = 1) -> None:
    if n > 0:
        metrics().cache.labels(endpoint=endpoint or "unknown", result=result).inc(n)


def count_strategy(endpoint: str, strategy: str, n: int = 1) -> None:
    if n > 0:
        metrics().strategy.labels(endpoint=endpoint, strategy=strategy).inc(n)


def count_response(endpoint: str, status: int) -> None:
    metrics().responses.labels(endpoint=endpoint, status=str(status)).inc()


def count_rate_limit(result: str) -> None:
    metrics().rate_limit.labels(result=result).inc()


def observe_model_call(method: str, rows: int) -> None:
    metrics().call_rows.labels(method=method).observe(rows)
