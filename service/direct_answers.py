"""The direct lane: a valid POST body is answered before BentoML's routing and IO layer (``DIRECT_ANSWERS``).

Why: at 64 concurrent clients, BentoML's per-request machinery in the API process — Starlette routing, its request
context, the input/output descriptors, signature binding and response wrapping — took about 45 % of the API's
CPU per /recommend (0.40 → 0.23 ms per request, 200k items; ``loadtest/README.md``). This ASGI middleware, the
innermost of ours, answers the JSON POST endpoints itself:

* it validates the body with the endpoint's request model (``model_validate_json``, as BentoML's JSON serde
  does, on the same pydantic class);
* it answers through ``Answerer.respond``, the same call the BentoML API methods make, and writes the response
  model's JSON (the bytes BentoML writes for it), or the endpoint's own error (404 for an unknown item);
* a body that does not validate goes on, unchanged, to BentoML's route: the 400 with ``detail[].loc`` stays
  BentoML's, one error format for both lanes;
* an exception is answered as BentoML answers it: a ``BentoMLException`` with its status (5xx with a generic
  message; ``ServiceUnavailable`` from the model client is a 503 a load balancer retries), anything else 500;
  the traceback goes to the log. Two departures, both on server faults: BentoML wraps a 4xx exception's body
  in a JSON list (here it is the object), and answers 400 for any pydantic error, even an answer failing its
  own response model (here that is a 500).
* its answers are marked ``"lane": "direct"`` in the request's log line.

What the lane skips is only the inside of BentoML's route: routing, the request context, the IO descriptors and
the response wrapping (its answers lack BentoML's ``server`` header). BentoML's request metrics sit outside all
our middleware and count both lanes; ``timbral_responses_total`` does too. Tracing spans would miss the API's
work, so with ``TRACING_ENABLED=true`` the lane is not installed and every request takes BentoML's route. The
middleware outside this one (request log, size limit, rate limit, the front cache) runs for both lanes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from service.answers import ENDPOINTS
from service.guard import read_body, replay_body
from service.logs import annotate, send_json_bytes

log = logging.getLogger("timbral.service")
UNEXPECTED = {"error": "An unexpected error has occurred, please check the server log."}


class DirectAnswers:
    """``get_answerer()`` gives the running service's ``Answerer``, or ``None`` before it exists."""

    def __init__(self, app, get_answerer: Callable[[], Any], routes: dict[str, tuple] = ENDPOINTS) -> None:
        self.app, self.get_answerer, self.routes = app, get_answerer, routes

    async def __call__(self, scope, receive, send) -> None:
        route = scope.get("path", "") if scope["type"] == "http" and scope.get("method") == "POST" else ""
        endpoint = self.routes.get(route)
        answerer = self.get_answerer() if endpoint else None
        if answerer is None:
            return await self.app(scope, receive, send)
        body = await read_body(receive)  # GuardMiddleware, outside this one, has enforced the size limit
        if body is None:
            return None  # the client went away before sending its body
        try:
            request = endpoint[0].model_validate_json(body or b"{}")
        except ValidationError:
            return await self.app(scope, replay_body(body, receive), send)  # BentoML's 400, field by field
        annotate(lane="direct")
        try:
            status, answer = await answerer.respond(route, request)
            payload = (answer.model_dump_json().encode("utf-8") if isinstance(answer, BaseModel)
                       else json.dumps(answer).encode("utf-8"))
        except Exception as exc:  # noqa: BLE001 - answered as BentoML's API layer answers it
            status, payload = _error(route, exc)
        await send_json_bytes(send, status, payload)
        return None


def _error(route: str, exc: Exception) -> tuple[int, bytes]:
    """BentoML's answer to an exception raised by an API method (``api_endpoint_wrapper``, BentoML 1.4)."""
    from bentoml.exceptions import BentoMLException

    log.exception("%s failed", route)
    status, body = 500, UNEXPECTED
    if isinstance(exc, BentoMLException):
        status = int(exc.error_code)
        if status in (401, 403):
            body = {"error": "Authorization error"}
        elif status < 500:
            body = {"error": str(exc)}
    return status, json.dumps(body).encode("utf-8")
