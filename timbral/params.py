"""The NMF recommender's knobs, their validation, and what a fit reports.

Kept apart from the model so the training CLI, the tuner and the tests can name and check parameters without
the model's code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from timbral.confidence import SCHEMES as CONFIDENCES
from timbral.confidence import auto_reg
from timbral.weighting import Weighting

INITS = ("nndsvd", "nndsvda", "nndsvdar", "random")
SOLVERS = ("cd", "mu")
BETA_LOSSES = ("frobenius", "kullback-leibler", "itakura-saito")


class DegenerateFit(ValueError):
    """The fit ended with every user (or item) factor at zero: the regularisation is too strong for this data.

    A property of the parameters on this data, not of the data alone: a search over parameters
    (``timbral tune``) records the trial as failed and goes on.
    """


@dataclass
class NMFParams:
    """The knobs that matter. Defaults were chosen from measured ranking quality (see README)."""

    n_components: int = 64
    weighting: str = "binary"
    init: str = "nndsvda"
    solver: str = "cd"
    beta_loss: str = "frobenius"
    alpha_W: float = 1e-3  # scikit-learn scales it by the data's shape; 1e-2 collapses to popularity (README)
    alpha_H: float | str = "same"
    l1_ratio: float = 0.0
    max_iter: int = 200
    tol: float = 1e-4
    random_state: int = 0
    # confidence-weighted refinement after scikit-learn's fit (timbral.confidence); "none" keeps plain NMF
    confidence: str = "idf"
    confidence_alpha: float = 1.0  # a listen's weight is 1 + alpha * its item's idf; a zero's is 1
    confidence_reg: float | str = "auto"  # L2 on both factors; "auto" = 0.7 * sqrt(number of users)
    confidence_sweeps: int = 20
    confidence_shift: float = 0.3  # raises every cell's target (a zero sits above the floor); see timbral.confidence

    def validate(self) -> NMFParams:
        problems = []
        if int(self.n_components) < 1:
            problems.append(f"n_components must be >= 1 (got {self.n_components})")
        if self.init not in INITS:
            problems.append(f"init must be one of {', '.join(INITS)} (got {self.init!r})")
        if self.solver not in SOLVERS:
            problems.append(f"solver must be one of {', '.join(SOLVERS)} (got {self.solver!r})")
        if self.beta_loss not in BETA_LOSSES:
            problems.append(f"beta_loss must be one of {', '.join(BETA_LOSSES)} (got {self.beta_loss!r})")
        if self.beta_loss != "frobenius" and self.solver != "mu":
            problems.append(f"beta_loss {self.beta_loss!r} needs solver 'mu'")
        if self.beta_loss == "itakura-saito":
            problems.append("beta_loss 'itakura-saito' cannot fit sparse data with zeros")
        if float(self.alpha_W) < 0 or (self.alpha_H != "same" and float(self.alpha_H) < 0):
            problems.append("alpha_W and alpha_H must be >= 0")
        if not 0.0 <= float(self.l1_ratio) <= 1.0:
            problems.append(f"l1_ratio must be within 0..1 (got {self.l1_ratio})")
        if int(self.max_iter) < 1:
            problems.append(f"max_iter must be >= 1 (got {self.max_iter})")
        if float(self.tol) < 0:
            problems.append(f"tol must be >= 0 (got {self.tol})")
        if self.confidence not in CONFIDENCES:
            problems.append(f"confidence must be one of {', '.join(CONFIDENCES)} (got {self.confidence!r})")
        elif self.confidence != "none" and self.beta_loss != "frobenius":
            problems.append(f"confidence {self.confidence!r} refines a squared loss: set confidence 'none' to fit "
                            f"beta_loss {self.beta_loss!r}")
        if float(self.confidence_alpha) < 0:
            problems.append(f"confidence_alpha must be >= 0 (got {self.confidence_alpha})")
        if self.confidence_reg != "auto" and float(self.confidence_reg) < 0:
            problems.append(f"confidence_reg must be >= 0 or 'auto' (got {self.confidence_reg!r})")
        shift = float(self.confidence_shift)
        if not (0.0 <= shift < float("inf")):
            problems.append(f"confidence_shift must be a finite number >= 0 (got {self.confidence_shift!r})")
        if int(self.confidence_sweeps) < 1:
            problems.append(f"confidence_sweeps must be >= 1 (got {self.confidence_sweeps})")
        try:
            Weighting(self.weighting)
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def confidence_penalty(self, n_users: int) -> float:
        """The refinement's L2 penalty for a fit on ``n_users`` users ("auto" resolved)."""
        return auto_reg(n_users) if self.confidence_reg == "auto" else float(self.confidence_reg)

    def user_penalties(self, n_items: int) -> tuple[float, float]:
        """``(l1, l2)``: the penalty scikit-learn puts on each user's factor row, scaled by the number of items
        as it scales ``alpha_W``. Fold-in solves for a new user's row with the same penalty."""
        alpha, l1_ratio = float(self.alpha_W), float(self.l1_ratio)
        return alpha * l1_ratio * n_items, alpha * (1.0 - l1_ratio) * n_items


@dataclass
class FitReport:
    convergence: list[tuple[int, float]] = field(default_factory=list)  # (iteration, reconstruction error)
    n_iter: int = 0
    converged: bool = False
    seconds: float = 0.0
    refinement: list[tuple[int, float]] = field(default_factory=list)  # (sweep, weighted loss), confidence fits
