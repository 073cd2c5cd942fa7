"""What the API process needs from a model artifact: the id maps, the popularity ranking and the metadata.

The API service maps ids to indices, answers the popularity fallback itself and labels answers with the
model's version; the factor matrices stay in the model service. Only the arrays named here are read from the
``.npz`` (members load lazily), after every file's sha256 is verified. Nothing is unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from timbral.artifact import ARRAYS_FILE, METADATA_FILE, verify_artifact
from timbral.interactions import IdMap

# label keys written by service.importer (and by the test helper that stores fitted models)
LABEL_REGISTRY_NAME = "registry-name"
LABEL_REGISTRY_VERSION = "registry-version"
LABEL_ALIAS = "registry-alias"
LABEL_RUN_ID = "run-id"
LABEL_CHECKSUM = "artifact-sha256"


@dataclass
class Catalog:
    users: IdMap
    items: IdMap
    popularity: np.ndarray  # float32, per item: number of users
    popular_order: np.ndarray  # item indices by decreasing popularity, ties by lower index (as the core ranks)
    metadata: dict[str, Any]
    tag: str = "timbral-nmf:unknown"  # BentoML store tag: unique per imported artifact
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: str | Path, tag: str = "timbral-nmf:unknown", labels: dict[str, str] | None = None) -> Catalog:
        root = Path(directory)
        verify_artifact(root)
        metadata = json.loads((root / METADATA_FILE).read_text())
        with np.load(root / ARRAYS_FILE, allow_pickle=False) as data:
            users = IdMap(data["user_ids"], metadata.get("user_id_kind", "str"))
            items = IdMap(data["item_ids"], metadata.get("item_id_kind", "str"))
            popularity = np.asarray(data["popularity"], dtype=np.float32)
        order = np.lexsort((np.arange(popularity.size), -popularity.astype(np.float64)))
        return cls(users, items, popularity, order, metadata, tag, dict(labels or {}))

    # ---------------------------------------------------------------------------------------- identity
    @property
    def version(self) -> str:
        """The registry version when the model came from the registry, else the store version."""
        return self.labels.get(LABEL_REGISTRY_VERSION) or self.tag.partition(":")[2] or self.tag

    @property
    def cache_namespace(self) -> str:
        """Distinct for every artifact served: cache entries of another model are never seen."""
        return self.tag

    def info(self) -> dict[str, Any]:
        meta = self.metadata
        metrics = {k: float(v) for k, v in (meta.get("metrics") or {}).items() if _is_number(v)}
        return {
            "name": str(meta.get("model_name") or self.tag.partition(":")[0]),
            "bento_model": self.tag,
            "registry_name": self.labels.get(LABEL_REGISTRY_NAME) or meta.get("model_name"),
            "registry_version": self.labels.get(LABEL_REGISTRY_VERSION),
            "alias": self.labels.get(LABEL_ALIAS),
            "run_id": self.labels.get(LABEL_RUN_ID) or meta.get("run_id"),
            "trained_at": meta.get("trained_at"),
            "metrics": metrics,
            "n_users": int(meta.get("n_users", len(self.users))),
            "n_items": int(meta.get("n_items", len(self.items))),
            "n_factors": int(meta.get("n_factors", 0)),
        }

    # ------------------------------------------------------------------------------------- popularity
    def popular(self, n: int, skip: Iterable[int] = ()) -> tuple[list[int], list[float]]:
        """The ``n`` most popular item indices not in ``skip``, with their popularity as the score."""
        skip = set(int(i) for i in skip)
        out: list[int] = []
        for idx in self.popular_order[: n + len(skip)].tolist():
            if idx not in skip:
                out.append(idx)
                if len(out) == n:
                    break
        return out, self.popularity[out].astype(float).tolist()

    def popular_among(self, candidates: Iterable[int], n: int) -> tuple[list[int], list[float]]:
        """The ``n`` most popular of ``candidates`` (item indices), ties by lower index."""
        cand = np.unique(np.asarray(list(candidates), dtype=np.int64))
        if cand.size == 0:
            return [], []
        order = np.lexsort((cand, -self.popularity[cand].astype(np.float64)))[:n]
        chosen = cand[order]
        return chosen.tolist(), self.popularity[chosen].astype(float).tolist()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
