"""``bentoml serve loadtest.unbatched:Timbral``: the same bento with adaptive batching off ("batching off").

BentoML 1.4 refuses ``max_batch_size=1`` on a batchable API (``APIMethod`` validates ``max_batch_size > 1``),
and ``service.settings`` refuses ``MAX_BATCH_SIZE=1`` accordingly, so "max_batch_size = 1" cannot be set
through the environment. This module imports the real services with the real settings and only marks the
model service's batchable APIs (``recommend``, ``similar``) as not batchable: every request is then one call
of the same method with a one-row array, which is exactly what a batch of one would be, without the
dispatcher. Each BentoML worker process imports this module (it is the serve target), so the API process and
the model-service process both see the change.
"""

from __future__ import annotations

from service.model_service import TimbralModel
from service.service import Timbral

UNBATCHED = ("recommend", "similar")

for _name in UNBATCHED:
    TimbralModel.apis[_name].batchable = False

__all__ = ["Timbral", "TimbralModel"]
