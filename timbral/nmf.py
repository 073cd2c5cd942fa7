"""The NMF recommender: fit on an interaction matrix, then answer in batches.

Every query method is batch-first: it takes an array of users (or items, or histories) and returns 2-D arrays,
one row per input, padded with index ``-1`` and score ``-inf`` when fewer than ``n`` candidates exist. That is
the shape a batchable serving API wants, and the loop over users stays inside numpy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import scipy
import scipy.sparse as sp
import sklearn

from timbral.artifact import load_artifact, save_artifact
from timbral.confidence import listen_confidence, refine
from timbral.factorise import sklearn_factors
from timbral.foldin import (
    confidence_system,
    fold_in_confidence,
    fold_in_least_squares,
    fold_in_multiplicative,
    histories_matrix,
    least_squares_system,
)
from timbral.interactions import IdMap, Interactions
from timbral.params import DegenerateFit, FitReport, NMFParams
from timbral.topk import topk, topk_dot
from timbral.weighting import Weighting

# (iterations done, max_iter, reconstruction error); during the confidence refinement
# (sweeps done, sweeps, weighted loss, "refine")
ProgressFn = Callable[..., None]


class NMFRecommender:
    """Collaborative filtering by non-negative matrix factorisation (scikit-learn ``NMF``).

    ``user_factors`` is users × k; ``item_factors`` is items × k (items-major, so scoring is one product).
    """

    def __init__(self, params: NMFParams | None = None, **overrides: Any) -> None:
        base = asdict(params) if params is not None else {}
        self.params = NMFParams(**{**base, **overrides}).validate()
        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None
        self.users: IdMap | None = None
        self.items: IdMap | None = None
        self.popularity: np.ndarray | None = None
        self.seen: sp.csr_matrix | None = None
        self.weighting: Weighting | None = None
        self.confidence_idf: np.ndarray | None = None  # per item, when params.confidence is "idf"
        self.confidence_reg: float | None = None  # the refinement's penalty, "auto" resolved
        self.report = FitReport()
        self.metadata: dict[str, Any] = {}

    # ------------------------------------------------------------------ fitting
    def fit(self, data: Interactions, progress: ProgressFn | None = None, checkpoint_every: int = 10) -> NMFRecommender:
        """Fit on ``data``: scikit-learn's NMF in checkpoints of ``checkpoint_every`` iterations
        (``timbral.factorise``; the convergence curve and ``progress`` after each), then, unless ``confidence`` is
        "none", the confidence-weighted refinement (``timbral.confidence``; ``progress`` after each sweep).
        """
        p = self.params
        started = time.perf_counter()
        weighting = Weighting(p.weighting).fit(data.matrix)
        X = weighting.transform(data.matrix)
        report = FitReport()
        W, item_factors = sklearn_factors(X, p, report, progress, checkpoint_every)
        if p.confidence != "none":
            self.confidence_idf = Weighting("bm25").fit(data.matrix).idf
            self.confidence_reg = p.confidence_penalty(X.shape[0])
            extra = listen_confidence(X, self.confidence_idf, p.confidence_alpha)
            on_sweep = None if progress is None else (lambda sweep, loss: progress(sweep, p.confidence_sweeps, loss, "refine"))
            W, item_factors, report.refinement = refine(X, extra, W, item_factors, self.confidence_reg,
                                                        p.confidence_sweeps, on_sweep=on_sweep,
                                                        shift=p.confidence_shift)
            if not W.any() or not item_factors.any():
                raise DegenerateFit(f"the confidence refinement drove every factor to zero (confidence_reg="
                                    f"{self.confidence_reg:g}); lower confidence_reg")
        report.seconds = time.perf_counter() - started
        self.user_factors = np.ascontiguousarray(W, dtype=np.float32)
        self.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
        self.users, self.items = data.users, data.items
        binary = data.matrix.copy()
        binary.data = np.ones_like(binary.data)
        self.seen = sp.csr_matrix(binary, dtype=np.int8)
        self.popularity = np.bincount(data.matrix.indices, minlength=data.n_items).astype(np.float32)
        self.weighting = weighting
        self.report = report
        self._cache_derived()
        return self

    def _cache_derived(self) -> None:
        space = self.item_factors
        if self.fitted_shift > 0:
            space = centred_profiles(self.user_factors, self.item_factors)
        norms = np.linalg.norm(space, axis=1)
        self._item_unit = (space / np.where(norms > 0, norms, 1.0)[:, None]).astype(np.float32)
        self._fold_in_system = None  # factored once, on the first fold-in

    # ------------------------------------------------------------------ queries
    @property
    def fitted_shift(self) -> float:
        """The shift the factors were fitted with: ``confidence_shift`` for a refined model, 0 for plain NMF
        (whose params may still carry the default shift, unused)."""
        return float(self.params.confidence_shift) if self.params.confidence != "none" else 0.0

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def recommend(
        self,
        user_indices,
        n: int = 10,
        *,
        exclude_seen: bool = True,
        exclude: Sequence[Sequence[int]] | None = None,
        include: Sequence[Sequence[int] | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` items for known users (indices into ``users``): ``(item indices, scores)``, each b × n."""
        users = self._check_indices(user_indices, self.n_users, "user")
        seen = [self.seen.indices[self.seen.indptr[u] : self.seen.indptr[u + 1]] for u in users] if exclude_seen else None
        return self.recommend_vectors(self.user_factors[users], n, seen=seen, exclude=exclude, include=include)

    def recommend_vectors(
        self,
        vectors: np.ndarray,
        n: int = 10,
        *,
        seen: Sequence[Sequence[int]] | None = None,
        exclude: Sequence[Sequence[int]] | None = None,
        include: Sequence[Sequence[int] | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` items for user vectors (b × k), e.g. folded-in histories."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.item_factors.shape[1]:
            raise ValueError(f"vectors must be b x {self.item_factors.shape[1]}, got {vectors.shape}")
        if include is None:
            # the fast path: product and selection fused, the b x n_items score matrix never materialised
            b = vectors.shape[0]
            masks = []
            for name, lists in (("seen", seen), ("exclude", exclude)):
                if lists is not None:
                    if len(lists) != b:
                        raise ValueError(f"{name} must have one entry per row ({b}), got {len(lists)}")
                    masks.append(lists)
            if len(masks) == 2:
                masks = [[np.concatenate([np.asarray(x, dtype=np.int64).reshape(-1) for x in pair]) for pair in zip(*masks, strict=True)]]
            return topk_dot(vectors, self.item_factors, n, exclude=masks[0] if masks else None)
        scores = vectors @ self.item_factors.T
        return self._select(scores, n, seen, exclude, include)

    def recommend_popular(
        self,
        batch_size: int,
        n: int = 10,
        *,
        seen: Sequence[Sequence[int]] | None = None,
        exclude: Sequence[Sequence[int]] | None = None,
        include: Sequence[Sequence[int] | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The fallback: most popular items (score = number of users), same masking rules."""
        scores = np.broadcast_to(self.popularity, (int(batch_size), self.n_items)).copy()
        return self._select(scores, n, seen, exclude, include)

    def similar_items(self, item_indices, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Nearest items by cosine similarity of item factors, the item itself excluded. With a
        ``confidence_shift``, whose common level sits in every item's factors, the cosine is taken with that
        level removed: the correlation of two items' predicted scores across users (see ``centred_profiles``)."""
        items = self._check_indices(item_indices, self.n_items, "item")
        return topk_dot(self._item_unit[items], self._item_unit, n, exclude=items[:, None])

    def score(self, user_indices, item_indices) -> np.ndarray:
        """Predicted affinity of user ``user_indices[b]`` for each item in row ``item_indices[b]``.

        ``item_indices`` is b × m; entries of -1 (unknown items) score NaN.
        """
        users = self._check_indices(user_indices, self.n_users, "user")
        items = np.asarray(item_indices, dtype=np.int64)
        if items.ndim != 2 or items.shape[0] != users.size:
            raise ValueError(f"item_indices must be {users.size} x m, got {items.shape}")
        return self.score_vectors(self.user_factors[users], items)

    def score_vectors(self, vectors: np.ndarray, item_indices: np.ndarray) -> np.ndarray:
        items = np.asarray(item_indices, dtype=np.int64)
        safe = np.where(items >= 0, items, 0)
        out = np.einsum("bk,bmk->bm", np.asarray(vectors, dtype=np.float32), self.item_factors[safe])
        return np.where(items >= 0, out, np.nan).astype(np.float32)

    def fold_in(self, item_indices: Sequence[Sequence[int]], values: Sequence[Sequence[float]] | None = None) -> np.ndarray:
        """User vectors (b × k) for histories the model has never seen (``timbral.foldin``).

        Each history is weighted like the training data, then its factor row solves the same regularised
        problem the fit solves for a known user, with the item factors fixed and the row constrained
        non-negative. An empty history gives a zero row.
        """
        Xw = self.weighting.transform(histories_matrix(item_indices, values, self.n_items))
        if self.params.confidence != "none":
            extra = listen_confidence(Xw, self.confidence_idf, self.params.confidence_alpha)
            if self._fold_in_system is None:
                self._fold_in_system = confidence_system(self.item_factors, self.confidence_reg, self.fitted_shift)
            return fold_in_confidence(Xw, extra, self.item_factors, self._fold_in_system, self.fitted_shift)
        l1, l2 = self.params.user_penalties(self.n_items)
        if self.params.beta_loss != "frobenius":
            return fold_in_multiplicative(Xw, self.item_factors, l1, l2)
        if self._fold_in_system is None:
            self._fold_in_system = least_squares_system(self.item_factors, l2)
        return fold_in_least_squares(Xw, self.item_factors, self._fold_in_system, l1)

    def recommend_ids(self, user_ids: Sequence[object], n: int = 10, *, exclude_seen: bool = True) -> list[dict[str, Any]]:
        """Id-level answers in input order: known users get their top ``n`` (strategy "personalized"), unknown
        users the popularity fallback (strategy "popular"). Each answer: ``item_ids``, ``scores``, ``strategy``.
        """
        idx = self.users.indices(user_ids)
        # a known user whose factors are all zero has no usable signal: same fallback as an unknown one
        usable = idx >= 0
        usable[usable] = self.user_factors[idx[usable]].any(axis=1)
        known = np.flatnonzero(usable)
        unknown = np.flatnonzero(~usable)
        answers: list[dict[str, Any]] = [{}] * len(idx)
        if known.size:
            items, scores = self.recommend(idx[known], n, exclude_seen=exclude_seen)
            for pos, row_items, row_scores in zip(known, items, scores, strict=True):
                answers[pos] = self._answer(row_items, row_scores, "personalized")
        if unknown.size:
            items, scores = self.recommend_popular(1, n)
            answer = self._answer(items[0], scores[0], "popular")
            for pos in unknown:
                answers[pos] = {key: list(v) if isinstance(v, list) else v for key, v in answer.items()}
        return answers

    def _answer(self, items: np.ndarray, scores: np.ndarray, strategy: str) -> dict[str, Any]:
        keep = items >= 0
        return {"item_ids": self.items.externals(items[keep]), "scores": scores[keep].astype(float).tolist(),
                "strategy": strategy}

    # ------------------------------------------------------------------ helpers
    def _select(self, scores, n, seen, exclude, include) -> tuple[np.ndarray, np.ndarray]:
        b = scores.shape[0]
        for name, lists in (("seen", seen), ("exclude", exclude), ("include", include)):
            if lists is not None and len(lists) != b:
                raise ValueError(f"{name} must have one entry per row ({b}), got {len(lists)}")
        for lists in (seen, exclude):
            if lists is not None:
                _mask(scores, lists, -np.inf)
        if include is not None:
            for r, allowed in enumerate(include):
                if allowed is None:
                    continue
                allowed = np.asarray(allowed, dtype=np.int64)
                allowed = allowed[(allowed >= 0) & (allowed < scores.shape[1])]  # -1 = unknown item
                keep = scores[r, allowed].copy()
                scores[r] = -np.inf
                scores[r, allowed] = keep
        return topk(scores, n)

    @staticmethod
    def _check_indices(indices, size: int, what: str) -> np.ndarray:
        arr = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        if arr.ndim != 1:
            raise ValueError(f"{what} indices must be 1-D")
        if arr.size and (arr.min() < 0 or arr.max() >= size):
            raise IndexError(f"{what} index out of range 0..{size - 1}")
        return arr

    # ------------------------------------------------------------------ persistence
    def save(self, directory, extra_metadata: dict[str, Any] | None = None):
        if self.user_factors is None:
            raise RuntimeError("fit the model before saving it")
        arrays = {
            "user_factors": self.user_factors,
            "item_factors": self.item_factors,
            "user_ids": self.users.ids,
            "item_ids": self.items.ids,
            "popularity": self.popularity,
            "seen_indptr": self.seen.indptr.astype(np.int64),
            "seen_indices": self.seen.indices.astype(np.int32),
            **self.weighting.to_arrays(),
        }
        if self.confidence_idf is not None:
            arrays["confidence_idf"] = np.asarray(self.confidence_idf, dtype=np.float32)
        metadata = {
            **self.metadata,
            **(extra_metadata or {}),
            "model": "nmf",
            "params": asdict(self.params),
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_factors": int(self.item_factors.shape[1]),
            "user_id_kind": self.users.kind,
            "item_id_kind": self.items.kind,
            "weighting": self.weighting.to_metadata(),
            "fit": {"n_iter": self.report.n_iter, "converged": self.report.converged, "seconds": self.report.seconds,
                    "convergence": self.report.convergence, "refinement": self.report.refinement},
            "confidence_reg": self.confidence_reg,
            "library_versions": {"numpy": np.__version__, "scipy": scipy.__version__, "scikit-learn": sklearn.__version__},
        }
        self.metadata = metadata
        return save_artifact(directory, arrays, metadata)

    @classmethod
    def load(cls, directory) -> NMFRecommender:
        arrays, metadata = load_artifact(directory)
        # artifacts saved before the refinement existed carry no "confidence": they are plain NMF; refined ones
        # saved before the shift existed carry no "confidence_shift": they were fitted without one
        model = cls(NMFParams(**{"confidence": "none", "confidence_shift": 0.0, **metadata["params"]}))
        model.user_factors = np.ascontiguousarray(arrays["user_factors"], dtype=np.float32)
        model.item_factors = np.ascontiguousarray(arrays["item_factors"], dtype=np.float32)
        model.users = IdMap(arrays["user_ids"], metadata["user_id_kind"])
        model.items = IdMap(arrays["item_ids"], metadata["item_id_kind"])
        model.popularity = arrays["popularity"].astype(np.float32)
        indptr, indices = arrays["seen_indptr"], arrays["seen_indices"]
        model.seen = sp.csr_matrix(
            (np.ones(indices.size, dtype=np.int8), indices, indptr), shape=(model.n_users, model.n_items)
        )
        model.weighting = Weighting.from_saved(metadata["weighting"], arrays)
        fit = metadata.get("fit", {})
        model.report = FitReport([tuple(x) for x in fit.get("convergence", [])], fit.get("n_iter", 0),
                                 fit.get("converged", False), fit.get("seconds", 0.0),
                                 [tuple(x) for x in fit.get("refinement", [])])
        if model.params.confidence != "none":
            model.confidence_idf = np.asarray(arrays["confidence_idf"], dtype=np.float32)
            model.confidence_reg = float(metadata["confidence_reg"])
        model.metadata = metadata
        model._cache_derived()
        return model


def centred_profiles(user_factors: np.ndarray, item_factors: np.ndarray) -> np.ndarray:
    """Item vectors (items × k) whose cosine is the Pearson correlation, over users, of two items' predicted
    scores ``W·h``: with ``C`` the covariance of the user factors, ``<g_i, g_j> = h_iᵀ C h_j``. Computed in
    k dimensions (an eigendecomposition of the k × k ``C``), never as users × items."""
    W = np.asarray(user_factors, dtype=np.float64)
    centred = W - W.mean(axis=0)
    values, vectors = np.linalg.eigh(centred.T @ centred / max(W.shape[0], 1))
    root = vectors * np.sqrt(np.clip(values, 0.0, None))  # C = root · rootᵀ
    return np.asarray(item_factors, dtype=np.float64) @ root


def _mask(scores: np.ndarray, lists: Sequence[Sequence[int]], value: float) -> None:
    lengths = [len(x) for x in lists]
    if not any(lengths):
        return
    rows = np.repeat(np.arange(len(lists)), lengths)
    cols = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists if len(x)])
    ok = (cols >= 0) & (cols < scores.shape[1])  # -1 marks an unknown item: nothing to mask
    scores[rows[ok], cols[ok]] = value
