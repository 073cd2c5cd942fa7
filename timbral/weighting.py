"""How raw interaction values become the matrix NMF factorises: raw, binary, log1p or bm25.

The weighting fitted on the training matrix is kept as plain arrays (for bm25: the item idf and the average
user length), so a new user's history folded in later is weighted exactly as the training users were.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

SCHEMES = ("raw", "binary", "log1p", "bm25")


@dataclass
class Weighting:
    scheme: str = "bm25"
    k1: float = 1.2
    b: float = 0.75
    idf: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    avg_length: float = 1.0

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"weighting must be one of {', '.join(SCHEMES)}; got {self.scheme!r}")

    def fit(self, matrix: sp.csr_matrix) -> Weighting:
        if self.scheme == "bm25":
            # document frequencies come from CSR column indices: a CSC matrix's ``indices`` are rows, and
            # duplicate entries would count a user twice
            matrix = sp.csr_matrix(matrix, copy=True)
            matrix.sum_duplicates()
            n_users = matrix.shape[0]
            df = np.bincount(matrix.indices, minlength=matrix.shape[1]).astype(np.float64)
            self.idf = np.log(n_users / (1.0 + df)).clip(min=0.0).astype(np.float32) + np.float32(1e-3)
            self.avg_length = float(matrix.sum() / max(n_users, 1))
        return self

    def transform(self, matrix: sp.csr_matrix) -> sp.csr_matrix:
        """Weighted copy of a CSR matrix (rows are users, columns the fitted items)."""
        out = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
        if self.scheme == "binary":
            out.data[:] = 1.0
        elif self.scheme == "log1p":
            np.log1p(out.data, out=out.data)
        elif self.scheme == "bm25":
            lengths = np.asarray(out.sum(axis=1)).ravel()
            norm = self.k1 * (1.0 - self.b + self.b * lengths / max(self.avg_length, 1e-12))
            row_norm = np.repeat(norm, np.diff(out.indptr)).astype(np.float32)
            tf = out.data
            out.data = (tf * (self.k1 + 1.0) / (row_norm + tf) * self.idf[out.indices]).astype(np.float32)
        out.eliminate_zeros()
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"weighting_idf": np.asarray(self.idf, dtype=np.float32)}

    def to_metadata(self) -> dict:
        return {"scheme": self.scheme, "k1": self.k1, "b": self.b, "avg_length": self.avg_length}

    @classmethod
    def from_saved(cls, metadata: dict, arrays: dict[str, np.ndarray]) -> Weighting:
        return cls(
            scheme=metadata["scheme"],
            k1=float(metadata["k1"]),
            b=float(metadata["b"]),
            idf=np.asarray(arrays["weighting_idf"], dtype=np.float32),
            avg_length=float(metadata["avg_length"]),
        )
