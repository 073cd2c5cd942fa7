"""PNG plots logged with each run: quality vs k, the item-popularity long tail, and fit convergence."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def quality_vs_k(model: dict[str, float], baseline: dict[str, float], ks: Sequence[int], out: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, title in ((axes[0], "recall", "Recall@k"), (axes[1], "ndcg", "nDCG@k")):
        ax.plot(ks, [model[f"{metric}_at_{k}"] for k in ks], "o-", label="NMF")
        ax.plot(ks, [baseline[f"baseline_{metric}_at_{k}"] for k in ks], "s--", label="popularity")
        ax.set_xlabel("k")
        ax.set_title(title)
        ax.set_xticks(list(ks))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def popularity_long_tail(popularity: np.ndarray, out: Path) -> Path:
    plt = _pyplot()
    counts = np.sort(np.asarray(popularity, dtype=np.float64))[::-1]
    share = np.cumsum(counts) / max(counts.sum(), 1.0)
    ranks = np.arange(1, counts.size + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].loglog(ranks, np.maximum(counts, 0.5))
    axes[0].set_xlabel("item rank")
    axes[0].set_ylabel("listeners")
    axes[0].set_title("Item popularity (log-log)")
    axes[0].grid(alpha=0.3)
    axes[1].plot(ranks / counts.size * 100, share * 100)
    axes[1].set_xlabel("% of items (most popular first)")
    axes[1].set_ylabel("% of interactions")
    axes[1].set_title("Long tail")
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def convergence(history: Sequence[tuple[int, float]], out: Path, title: str = "NMF convergence",
                xlabel: str = "iteration", ylabel: str = "reconstruction error (Frobenius)") -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    if history:
        its, errs = zip(*history, strict=True)
        ax.plot(its, errs, "o-")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
