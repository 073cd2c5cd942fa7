"""Every serving setting in one pydantic-settings object, read from the environment (and ``.env`` if present).

Importing this module imports neither BentoML nor Redis, so the CLI and the tests can read settings cheaply.
Variable names are the field names in upper case (``MODEL_TAG``, ``REDIS_URL``…); ``.env.example`` documents
each one.
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore",
                                      case_sensitive=False, protected_namespaces=())

    # which BentoML store model to serve (and to pack into the bento at `bentoml build`)
    model_tag: str = Field("timbral-nmf:latest", min_length=1)
    # cache
    redis_url: str = "redis://127.0.0.1:6379/0"
    enable_caching: bool = True
    cache_ttl: int = Field(300, ge=1, description="seconds a cached answer lives")
    redis_timeout_ms: int = Field(250, ge=1, le=60_000, description="timeout of every Redis call")
    # adaptive batching of the model service
    max_batch_size: int = Field(64, ge=1, le=4096, description="1 turns batching off (API and model service)")
    max_latency_ms: int = Field(1000, ge=1)
    # the API coalesces concurrent rows into one model call while this many calls are outstanding
    model_calls_in_flight: int = Field(1, ge=1, le=64)
    # after a call of several requests (load), its slot is kept for this fraction of the call's time (max 20 ms)
    model_call_hold: float = Field(0.6, ge=0.0, le=1.0)
    # request limits
    max_k: int = Field(500, ge=1, le=100_000)
    max_batch_users: int = Field(100, ge=1, le=10_000)
    max_exclude_items: int = Field(1000, ge=0, le=100_000, description="items per exclude/include/score list")
    max_history_items: int = Field(1000, ge=1, le=100_000, description="items per /recommend/history request")
    max_request_size: int = Field(1_048_576, ge=1024, le=1 << 30, description="largest request body in bytes")
    # per-client rate limiting (moving window in Redis, shared by every replica; fails open without Redis)
    rate_limit: str = Field("100/minute", description="limits-library notation, e.g. 100/minute or 10/second")
    rate_limit_enabled: bool = True
    trust_forwarded_for: bool = Field(False, description="key clients by X-Forwarded-For (behind nginx only)")
    # process
    api_workers: int = Field(2, ge=1, le=64, description="API service worker processes")
    # valid POST bodies answered by our middleware, ahead of BentoML's per-request layer (service/direct_answers.py)
    direct_answers: bool = Field(True, description="answer valid POST bodies before BentoML's routing and IO layer")
    # BentoML's OpenTelemetry request spans; off (the default) skips its tracing middleware in both services
    tracing_enabled: bool = Field(False, description="keep BentoML's request tracing (exporter set in BentoML's config)")
    log_level: str = Field("INFO", pattern=r"(?i)^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")
    blas_threads: int = Field(1, ge=1, le=256)

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        from limits import parse_many  # light: imports no Redis client

        try:
            parsed = parse_many(value)
        except ValueError as exc:
            raise ValueError(f"not a rate limit like '100/minute': {exc}") from None
        if len(parsed) != 1:
            raise ValueError("give exactly one rate limit, like '100/minute'")
        if parsed[0].amount < 1:
            raise ValueError("the rate limit must allow at least 1 request (RATE_LIMIT_ENABLED=false turns it off)")
        return value.strip()

    @property
    def direct_lane(self) -> bool:
        """Whether ``service.direct_answers`` is installed: on unless switched off, and off while tracing (its
        answers would carry no API span)."""
        return self.direct_answers and not self.tracing_enabled

    def bentoml_tracing(self) -> dict:
        """Extra ``@bentoml.service`` options for tracing.

        BentoML wraps every request (and every response chunk) in OpenTelemetry spans, even with its default
        sample rate of 0, where nothing is exported: measured at a third of the API process's CPU per request
        (``loadtest/README.md``). Off, every URL is excluded, so the middleware passes requests straight through;
        on, BentoML's own ``tracing`` configuration (exporter, sample rate) applies unchanged.
        """
        return {} if self.tracing_enabled else {"tracing": {"excluded_urls": [".*"]}}

    @property
    def redis_url_redacted(self) -> str:
        return redact_url(self.redis_url)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe to log or show in /health)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once). Tests call ``get_settings.cache_clear()`` after changing env."""
    return Settings()
