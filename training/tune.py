"""``timbral tune``: a search over the NMF knobs as nested MLflow runs under one parent.

Trial 1 is the given parameters (the defaults from the CLI). By default each later trial is the best trial so
far with one knob moved one step (a neighbourhood search): good settings sit next to one another here, and a
random draw of six knobs mostly lands on poor ones (on Last.fm 2k, 12 random trials never beat the defaults).
``search="random"`` draws every knob independently instead.

Each child fits on the same split and logs its params and metrics; the best child (by the gate metric) is
reopened, refit on all data, logged and registered, then goes through the same promotion gate as ``train``.
A trial whose penalty zeroes every factor (:class:`timbral.params.DegenerateFit`) is a child run marked FAILED
with its reason in the ``trial_error`` tag, and the search goes on; only when every trial fails does tune fail.
"""

from __future__ import annotations

from dataclasses import replace

import mlflow
import numpy as np

from timbral.params import DegenerateFit, NMFParams
from training import pipeline, tracking
from training.pipeline import TrainConfig, TrainResult
from training.progress import Reporter
from training.split import split_per_user

# Ranges from the quality sweeps in the README (generated data, MovieLens 100k, Last.fm 2k): Last.fm kept
# improving up to 256 components and liked a heavier item-side penalty (alpha_H 3e-3 with alpha_W 1e-3: 0.210 vs
# 0.195 at 64 components), while 1M generated listens lost a fifth of their nDCG at alpha_W 1.5e-3.
SEARCH_SPACE: dict[str, list] = {
    "n_components": [16, 32, 64, 96, 128, 192, 256],
    "weighting": ["binary", "bm25", "log1p", "raw"],
    "alpha_W": [0.0, 1e-4, 5e-4, 1e-3, 1.5e-3, 2e-3],
    "alpha_H": ["same", 0.0, 1e-3, 3e-3],
    "l1_ratio": [0.0, 0.5],
    "init": ["nndsvda", "nndsvd", "random"],
    "confidence": ["idf", "none"],  # the refinement on (the default) or plain scikit-learn NMF
}


ORDERED = ("n_components", "alpha_W")  # knobs whose values are steps on a scale: a move goes one step
SEARCHES = ("neighbours", "random")


def sample_params(rng: np.random.Generator, base: NMFParams, space: dict[str, list] | None = None) -> NMFParams:
    """Random search: every knob of ``space`` drawn independently."""
    space = SEARCH_SPACE if space is None else space
    choice = {name: values[int(rng.integers(len(values)))] for name, values in space.items()}
    return replace(base, **choice).validate()


def neighbour_params(rng: np.random.Generator, best: NMFParams, tried: set[tuple],
                     space: dict[str, list] | None = None, attempts: int = 200) -> NMFParams:
    """Neighbourhood search: ``best`` with one knob moved, never a setting already ``tried``.

    A knob of ``ORDERED`` moves one step up or down its list (from the nearest listed value when ``best`` holds
    an unlisted one); any other knob takes another of its values. When every neighbour has been tried, a random
    draw from the whole space stands in.
    """
    space = SEARCH_SPACE if space is None else space
    names = [n for n, values in space.items() if len(values) > 1 or values[0] != getattr(best, n)]
    for _ in range(attempts if names else 0):
        name = names[int(rng.integers(len(names)))]
        values, current = space[name], getattr(best, name)
        if name in ORDERED:
            at = int(np.argmin([abs(float(v) - float(current)) for v in values]))
            steps = [j for j in (at - 1, at + 1) if 0 <= j < len(values)] if values[at] == current else [at]
            value = values[steps[int(rng.integers(len(steps)))]]
        else:
            others = [v for v in values if v != current]
            value = others[int(rng.integers(len(others)))]
        candidate = replace(best, **{name: value})
        if _key(candidate) not in tried:
            return candidate.validate()
    return sample_params(rng, best, space)


def _key(params: NMFParams) -> tuple:
    """What a setting fits: alpha_H "same" and alpha_H equal to alpha_W are one setting."""
    values = dict(vars(params))
    if values["alpha_H"] == "same":
        values["alpha_H"] = values["alpha_W"]
    return tuple(sorted((k, str(float(v)) if k.startswith("alpha") else str(v)) for k, v in values.items()))


def run_tuning(cfg: TrainConfig, trials: int = 20, seed: int = 0, progress: Reporter | None = None,
               space: dict[str, list] | None = None, search: str = "neighbours") -> TrainResult:
    """Trial 1 is ``cfg.params`` as given. Each later trial is, with ``search="neighbours"``, the best trial so
    far with one knob moved (:func:`neighbour_params`), or with ``"random"`` a draw of every knob of ``space``
    (default ``SEARCH_SPACE``)."""
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {', '.join(SEARCHES)} (got {search!r})")
    progress = progress or Reporter()
    rng = np.random.default_rng(seed)
    tried: set[tuple] = set()

    def next_params(i: int, best) -> NMFParams:
        if i == 1:
            return cfg.params
        if search == "random":
            return sample_params(rng, cfg.params, space)
        return neighbour_params(rng, best[2] if best else cfg.params, tried, space)

    mlflow.set_experiment(cfg.experiment)
    with mlflow.start_run(run_name=cfg.run_name or "tune") as parent:
        loaded = pipeline.load_data(cfg, progress)
        mlflow.set_tags({"data_source": loaded.raw.source, "git_commit": tracking.git_commit() or "unknown",
                         "timbral_task": "tune"})
        mlflow.log_params({"trials": trials, "search": search, "search_seed": seed, "gate_metric": cfg.gate_metric})
        digest = tracking.log_dataset(loaded.frame, loaded.raw.source, "interactions")
        split = split_per_user(loaded.interactions, cfg.test_fraction, cfg.split_seed)
        best, failed = None, []
        for i in range(1, trials + 1):
            params = next_params(i, best)
            tried.add(_key(params))
            try:
                with mlflow.start_run(run_name=f"trial-{i:02d}", nested=True) as child:
                    tracking.log_model_params(pipeline.NMFRecommender(params))
                    try:
                        model, result = pipeline.fit_and_evaluate(params, split, cfg, progress,
                                                                  f" (trial {i}/{trials})")
                    except DegenerateFit as exc:
                        mlflow.set_tag("trial_error", str(exc))
                        raise  # leaving the block marks this child run FAILED
                    mlflow.log_metrics({**result.model, **result.baseline, "fit_seconds": model.report.seconds})
                    score = result.model[cfg.gate_metric]
                    if best is None or score > best[0]:
                        best = (score, child.info.run_id, params, result, model)
            except DegenerateFit as exc:
                failed.append(f"trial {i}: {exc}")
                progress.info(f"trial {i}/{trials} failed, the search goes on: {exc}")
        mlflow.log_metrics({"failed_trials": len(failed)})
        if best is None:
            raise RuntimeError(f"all {trials} trials failed; {failed[0]}")
        score, best_run, params, result, model = best
        mlflow.log_metrics({f"best_{cfg.gate_metric}": score})
        mlflow.set_tag("best_child_run_id", best_run)
    # reopen the best child: its run gets the refit model and the registered version
    with mlflow.start_run(run_id=parent.info.run_id), mlflow.start_run(run_id=best_run, nested=True):
        if cfg.refit:
            model = pipeline.fit_model(params, loaded.interactions, progress, "Refitting the best trial on all data")
        mlflow.set_tag("final_model", "best trial refit on all data")
        return pipeline.log_and_register(replace(cfg, params=params), best_run, model, result, digest, loaded, progress)
