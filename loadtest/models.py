"""Models of a chosen size for load tests and benchmarks, written into a BentoML model store.

The interactions are generated listening data (``training.generate``) over a catalogue of exactly
``n_items`` tracks: tracks nobody happened to play get one listen from a random user, so every catalogue item
is in the model. The factors are either fitted by the core (``NMFRecommender.fit``, ``max_iter`` capped: this
is about speed, not quality) or random non-negative float32 (uniform in [0, 1)) of the right shape, which is
just as honest for timing and takes seconds at any size. Either way the seen-items lists, ids and popularity
are those of the generated data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class ModelSpec:
    n_items: int
    n_users: int | None = None  # default: n_items // 2 (at least 1,000)
    interactions: int | None = None  # default: 20 per item
    factors: int = 64
    fitted: bool = True
    max_iter: int = 30
    seed: int = 7

    @property
    def users(self) -> int:
        return int(self.n_users or max(1000, self.n_items // 2))

    @property
    def listens(self) -> int:
        return int(self.interactions or 20 * self.n_items)

    def describe(self) -> str:
        how = f"NMF fitted ({self.max_iter} iterations max)" if self.fitted else "random non-negative factors"
        return (f"{self.n_items:,} items, {self.users:,} users, {self.listens:,} generated listens, "
                f"{self.factors} factors, {how}")


def generated_interactions(spec: ModelSpec):
    """Interactions over exactly ``spec.n_items`` items (see the module docstring)."""
    import pandas as pd

    from timbral.interactions import Interactions
    from training.generate import build_catalog, generate_listens

    frame = pd.concat(list(generate_listens(spec.users, spec.n_items, spec.listens, spec.seed)), ignore_index=True)
    catalog_ids = build_catalog(spec.n_items, spec.seed).item_ids
    unheard = np.setdiff1d(catalog_ids, frame["item_id"].to_numpy())
    users = frame["user_id"].to_numpy()
    items = frame["item_id"].to_numpy()
    values = frame["value"].to_numpy().astype(np.float64)
    if unheard.size:
        rng = np.random.default_rng(spec.seed)
        users = np.concatenate([users, rng.choice(np.unique(users), unheard.size)])
        items = np.concatenate([items, unheard])
        values = np.concatenate([values, np.ones(unheard.size)])
    return Interactions.from_arrays(users, items, values)


def build_model(spec: ModelSpec, log=print):
    from timbral.nmf import NMFRecommender

    started = time.perf_counter()
    data = generated_interactions(spec)
    log(f"  generated {data.nnz:,} interactions ({data.n_users:,} users x {data.n_items:,} items) "
        f"in {time.perf_counter() - started:.1f}s")
    started = time.perf_counter()
    if spec.fitted:
        model = NMFRecommender(n_components=spec.factors, max_iter=spec.max_iter, random_state=spec.seed).fit(data)
    else:
        model = with_random_factors(data, spec.factors, spec.seed)
    log(f"  {'fitted' if spec.fitted else 'random factors'} in {time.perf_counter() - started:.1f}s")
    model.metadata.update({"model_name": "timbral-nmf", "run_id": "loadtest", "metrics": {},
                           "trained_at": "2024-01-01T00:00:00+00:00", "loadtest_model": spec.describe()})
    return model


def with_random_factors(data, factors: int, seed: int = 7):
    """An ``NMFRecommender`` with the state ``fit`` leaves, but random non-negative factors (for timing)."""
    import scipy.sparse as sp

    from timbral.nmf import NMFRecommender
    from timbral.weighting import Weighting

    model = NMFRecommender(n_components=factors, confidence="none")  # no refinement: nothing was fitted
    rng = np.random.default_rng(seed)
    model.weighting = Weighting(model.params.weighting).fit(data.matrix)
    model.user_factors = rng.random((data.n_users, factors), dtype=np.float32)
    model.item_factors = rng.random((data.n_items, factors), dtype=np.float32)
    model.users, model.items = data.users, data.items
    binary = data.matrix.copy()
    binary.data = np.ones_like(binary.data)
    model.seen = sp.csr_matrix(binary, dtype=np.int8)
    model.popularity = np.bincount(data.matrix.indices, minlength=data.n_items).astype(np.float32)
    model._cache_derived()
    return model


def store(model, bentoml_home: str | Path, name: str = "timbral-nmf", version: str = "1") -> tuple[str, Path]:
    """Save ``model`` into the store under ``bentoml_home``: ``(tag, artifact directory)``."""
    from bentoml._internal.models import ModelStore

    from tests.e2e.helpers import store_model

    tag = store_model(model, bentoml_home, name=name, version=version)
    return tag, Path(ModelStore(Path(bentoml_home) / "models").get(tag).path)
