"""scikit-learn's NMF, run in checkpoints so a long fit reports its convergence as it goes.

The recommender's first fitting stage: ``X ≈ W Hᵀ`` by scikit-learn, resumed every ``checkpoint_every``
iterations from the last ``W, H`` (``init="custom"``), with the reconstruction error recorded at each
checkpoint. The confidence refinement (``timbral.confidence``) starts from what this returns.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning

from timbral.params import DegenerateFit, FitReport, NMFParams


def sklearn_factors(X: sp.csr_matrix, p: NMFParams, report: FitReport,
                    progress: Callable[..., None] | None = None, checkpoint_every: int = 10
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(W, H)``, users × k and items × k, fitted to ``X``; ``report``'s convergence, ``n_iter`` and
    ``converged`` are filled in. Fitting stops at ``max_iter``, when scikit-learn converges within a chunk, or
    when the error improved by less than ``tol`` (relative) over the last checkpoint; ``progress(done,
    max_iter, error)`` is called after each checkpoint."""
    k = min(int(p.n_components), min(X.shape))
    chunk = max(1, int(checkpoint_every))
    W = H = None
    done = 0
    prev_err = None
    while done < p.max_iter:
        steps = min(chunk, p.max_iter - done)
        model = NMF(
            n_components=k,
            init=p.init if W is None else "custom",
            solver=p.solver,
            beta_loss=p.beta_loss,
            alpha_W=float(p.alpha_W),
            alpha_H=p.alpha_H if p.alpha_H == "same" else float(p.alpha_H),
            l1_ratio=float(p.l1_ratio),
            max_iter=steps,
            tol=float(p.tol),
            random_state=p.random_state,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            W = model.fit_transform(X, W=W, H=H) if W is not None else model.fit_transform(X)
        H = model.components_
        done += int(model.n_iter_)
        if not W.any() or not H.any():
            raise DegenerateFit(
                f"regularisation drove every {'user' if not W.any() else 'item'} factor to zero "
                f"(alpha_W={p.alpha_W}, alpha_H={p.alpha_H}, l1_ratio={p.l1_ratio}); lower alpha_W/alpha_H"
            )
        err = float(model.reconstruction_err_)
        report.convergence.append((done, err))
        if progress is not None:
            progress(done, int(p.max_iter), err)
        stalled = prev_err is not None and (prev_err - err) <= float(p.tol) * max(prev_err, 1e-12)
        if model.n_iter_ < steps or stalled:
            report.converged = True
            break
        prev_err = err
    report.n_iter = done
    return W, H.T
