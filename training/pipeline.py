"""One training run, end to end: load → validate → split → fit → evaluate → refit → log → register → gate.

The MLflow run is opened first, so a failure at any step leaves a FAILED run with what was logged so far, and
registers nothing and moves no alias: registration is the last step, after every check has passed.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from timbral.interactions import InteractionError, Interactions
from timbral.nmf import NMFRecommender
from timbral.params import NMFParams
from training import registry, tracking
from training.evaluate import DEFAULT_KS, Evaluation, evaluate
from training.progress import Reporter
from training.readers import ColumnNames, RawData, read_interactions
from training.split import Split, split_per_user
from training.validate import ValidationError, validate

HEADLINE_METRICS = ("ndcg_at_10", "recall_at_10", "precision_at_10", "map_at_10", "hit_rate_at_10")


class TrainingError(RuntimeError):
    """Training could not complete; the message says why in one line."""


@dataclass
class TrainConfig:
    data: str
    fmt: str = "auto"
    table: str | None = None
    columns: ColumnNames = field(default_factory=ColumnNames)
    params: NMFParams = field(default_factory=NMFParams)
    min_user_interactions: int = 1
    min_item_interactions: int = 1
    ks: tuple[int, ...] = DEFAULT_KS
    test_fraction: float = 0.2
    split_seed: int = 42
    eval_max_users: int | None = 20_000
    refit: bool = True
    experiment: str = "timbral"
    model_name: str = "timbral-nmf"
    register: bool = True
    promote: str = "auto"
    gate_metric: str = "ndcg_at_10"
    gate_margin: float = 0.0
    run_name: str | None = None


@dataclass
class TrainResult:
    run_id: str
    model_name: str
    version: str | None
    alias: str | None
    gate_reason: str | None
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    model_uri: str | None
    n_users: int
    n_items: int
    n_interactions: int
    fit_seconds: float
    sample_user: object = None
    sample_recommendations: list = field(default_factory=list)


@dataclass
class LoadedData:
    raw: RawData
    interactions: Interactions
    frame: object  # the validated pandas DataFrame


def load_data(cfg: TrainConfig, progress: Reporter) -> LoadedData:
    with progress.stage(f"Loading {cfg.data}"):
        raw = read_interactions(cfg.data, fmt=cfg.fmt, table=cfg.table, columns=cfg.columns)
    with progress.stage(f"Validating {len(raw.frame):,} rows"):
        frame = validate(raw)
        try:
            data = Interactions.from_arrays(
                frame["user_id"].to_numpy(), frame["item_id"].to_numpy(), frame["value"].to_numpy(),
                frame["timestamp"].to_numpy() if "timestamp" in frame.columns else None,
                min_user_interactions=cfg.min_user_interactions, min_item_interactions=cfg.min_item_interactions,
            )
        except InteractionError as exc:
            raise ValidationError(f"{raw.source}: {exc}") from None
    return LoadedData(raw, data, frame)


def fit_model(params: NMFParams, data: Interactions, progress: Reporter, title: str) -> NMFRecommender:
    with progress.stage(title, total=params.max_iter) as update:
        def show(done, total, value, phase="fit"):
            update(done, total, f"err {value:,.1f}" if phase == "fit" else f"refining with listen confidences, loss {value:,.1f}")

        return NMFRecommender(params).fit(data, progress=show)


def fit_and_evaluate(params: NMFParams, split: Split, cfg: TrainConfig, progress: Reporter, label: str = "") -> tuple[NMFRecommender, Evaluation]:
    model = fit_model(params, split.train, progress, f"Fitting NMF on the training split{label}")
    with progress.stage(f"Evaluating{label}") as update:
        result = evaluate(model, split, cfg.ks, max_users=cfg.eval_max_users,
                          progress=lambda done, total: update(done, total))
    return model, result


def run_training(cfg: TrainConfig, progress: Reporter | None = None) -> TrainResult:
    progress = progress or Reporter()
    params = NMFParams(**asdict(cfg.params)).validate()
    mlflow.set_experiment(cfg.experiment)
    with mlflow.start_run(run_name=cfg.run_name) as run:
        loaded = load_data(cfg, progress)
        data = loaded.interactions
        mlflow.set_tags({"data_source": loaded.raw.source, "data_format": loaded.raw.fmt,
                         "git_commit": tracking.git_commit() or "unknown", "timbral_task": "train"})
        tracking.log_model_params(NMFRecommender(params))
        split = split_per_user(data, cfg.test_fraction, cfg.split_seed)
        mlflow.log_params({
            "data_rows": len(loaded.frame), "n_users": data.n_users, "n_items": data.n_items,
            "n_interactions": data.nnz, "min_user_interactions": cfg.min_user_interactions,
            "min_item_interactions": cfg.min_item_interactions, "split_strategy": split.strategy,
            "test_fraction": cfg.test_fraction, "split_seed": cfg.split_seed, "eval_ks": ",".join(map(str, cfg.ks)),
            "eval_max_users": cfg.eval_max_users, "refit_on_all_data": cfg.refit,
        })
        digest = tracking.log_dataset(loaded.frame, loaded.raw.source, Path(str(cfg.table or cfg.data)).name)
        model, result = fit_and_evaluate(params, split, cfg, progress)
        mlflow.log_metrics({**result.model, **result.baseline, "eval_users": result.n_users,
                            "fit_seconds_split": model.report.seconds, "fit_iterations_split": model.report.n_iter})
        history = model.report.convergence
        if cfg.refit:
            model = fit_model(params, data, progress, "Refitting NMF on all data")
            mlflow.log_metrics({"fit_seconds": model.report.seconds, "fit_iterations": model.report.n_iter})
            history = model.report.convergence
        mlflow.set_tag("final_model", "refit on all data after evaluation" if cfg.refit else "fit on the training split")
        for it, err in history:
            mlflow.log_metric("reconstruction_error", err, step=it)
        for sweep, loss in model.report.refinement:
            mlflow.log_metric("confidence_loss", loss, step=sweep)
        if model.confidence_reg is not None:
            mlflow.log_param("confidence_reg_resolved", model.confidence_reg)
        tracking.log_plots(result.model, result.baseline, result.ks, model.popularity, history, model.report.refinement)
        return log_and_register(cfg, run.info.run_id, model, result, digest, loaded, progress)


def log_and_register(cfg: TrainConfig, run_id: str, model: NMFRecommender, result: Evaluation, digest: str,
                      loaded: LoadedData, progress: Reporter) -> TrainResult:
    metadata = {
        "model_name": cfg.model_name, "run_id": run_id, "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_digest": digest, "data_source": loaded.raw.source, "metrics": result.model,
        "baseline_metrics": result.baseline, "refit_on_all_data": cfg.refit,
    }
    with tempfile.TemporaryDirectory() as tmp, progress.stage("Logging the model to MLflow (S3 artifacts)"):
        artifact_dir = model.save(Path(tmp) / "timbral", extra_metadata=metadata)
        info = tracking.log_pyfunc(model, artifact_dir, cfg.model_name if cfg.register else None)
    mlflow.log_metrics({**result.model, **result.baseline}, model_id=info.model_id)
    version = alias = reason = None
    if cfg.register:
        client = MlflowClient()
        version = str(info.registered_model_version)
        for name in HEADLINE_METRICS:
            if name in result.model:
                client.set_model_version_tag(cfg.model_name, version, registry.metric_tag(name), f"{result.model[name]:.6f}")
        client.set_model_version_tag(cfg.model_name, version, "data_digest", digest)
        decision = registry.gate_and_alias(client, cfg.model_name, version, cfg.gate_metric, cfg.gate_margin,
                                           cfg.promote)
        alias, reason = decision.alias, decision.reason
        mlflow.set_tags({"registered_version": version, "registered_alias": alias, "promotion_reason": reason})
    sample_user = model.users.external(0)
    sample = model.recommend_ids([sample_user], 5)[0]
    return TrainResult(
        run_id=run_id, model_name=cfg.model_name, version=version, alias=alias, gate_reason=reason,
        metrics=result.model, baseline_metrics=result.baseline, model_uri=info.model_uri,
        n_users=model.n_users, n_items=model.n_items, n_interactions=int(model.seen.nnz),
        fit_seconds=model.report.seconds, sample_user=sample_user,
        sample_recommendations=list(zip(sample["item_ids"], sample["scores"], strict=True)),
    )
