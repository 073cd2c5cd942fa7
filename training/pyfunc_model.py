"""The MLflow pyfunc model, logged *from code*: MLflow runs this file to build the model; nothing is pickled.

Contract (what the service and outside checks rely on)::

    model = mlflow.pyfunc.load_model("models:/timbral-nmf@champion")
    model.predict(pd.DataFrame({"user_id": [...]}), params={"k": 10})

returns a DataFrame with columns ``user_id``, ``item_ids`` (list, best first), ``scores`` (list) and
``strategy`` ("personalized", or "popular" for users the model has never seen), one row per input user, in
input order. Seen items are excluded unless ``params={"exclude_seen": False}``.
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel

ARTIFACT_KEY = "timbral"  # the core artifact directory, under <model>/artifacts/timbral/


class TimbralPyfunc(PythonModel):
    # The signature is declared explicitly when the model is logged; MLflow's type-hint validation (and its
    # warning that predict() has no type hints) is not wanted on top of it.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from timbral.nmf import NMFRecommender

        self.model = NMFRecommender.load(context.artifacts[ARTIFACT_KEY])

    def predict(self, context, model_input, params=None):
        import pandas as pd

        params = params or {}
        k = int(params.get("k", 10))
        if not 1 <= k <= 10_000:
            raise ValueError(f"params.k must be within 1..10000, got {k}")
        exclude_seen = bool(params.get("exclude_seen", True))
        if "user_id" not in model_input.columns:
            raise ValueError(f"input needs a 'user_id' column; got {list(model_input.columns)}")
        user_ids = model_input["user_id"].tolist()
        answers = self.model.recommend_ids(user_ids, k, exclude_seen=exclude_seen)
        return pd.DataFrame(
            {
                "user_id": user_ids,
                "item_ids": [a["item_ids"] for a in answers],
                "scores": [a["scores"] for a in answers],
                "strategy": [a["strategy"] for a in answers],
            }
        )


mlflow.models.set_model(TimbralPyfunc())
