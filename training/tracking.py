"""Everything a training run logs to MLflow: params, metrics, dataset, tags, plots and the pyfunc model."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

import timbral
from timbral.nmf import NMFRecommender
from training import plots
from training.pyfunc_model import ARTIFACT_KEY

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
CORE_PACKAGE = Path(timbral.__file__).parent


# MLflow hints that do not apply to this model (its schema and inputs are declared on purpose)
_EXPECTED_WARNINGS = (
    r".*Add type hints to the `predict` method.*",
    r".*Inferred schema contains integer column.*",
    r".*dataset source can be interpreted in multiple ways.*",
)


@contextlib.contextmanager
def expected_warnings_silenced():
    with warnings.catch_warnings():
        for pattern in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern, category=UserWarning)
        yield


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def log_model_params(model: NMFRecommender) -> None:
    mlflow.log_params({f"nmf_{k}": v for k, v in asdict(model.params).items()})


def log_dataset(frame: pd.DataFrame, source: str, name: str) -> str:
    """Log the cleaned interactions as the run's training input; return the dataset digest."""
    with expected_warnings_silenced():
        try:
            dataset = mlflow.data.from_pandas(frame, source=source, name=name)
        except Exception:  # noqa: BLE001 - an unrecognised source URI must not fail the run
            dataset = mlflow.data.from_pandas(frame, name=name)
    for attempt in range(1, 4):
        try:
            mlflow.log_input(dataset, context="training")
            break
        except MlflowException as exc:
            if attempt == 3 or not lost_dataset_insert_race(exc):
                raise
            time.sleep(0.1 * attempt)  # the other run's dataset row is committed: the retry links to it
    return dataset.digest


def lost_dataset_insert_race(exc: Exception) -> bool:
    """The tracking server looks a dataset up and inserts it if missing, without a lock: two runs logging the
    same data (same experiment, name and digest) at the same moment can both miss it, and the second insert
    breaks the unique key. The dataset then exists, so logging it again succeeds."""
    text = str(exc)
    return "datasets" in text and any(s in text for s in ("UNIQUE constraint failed", "duplicate key value",
                                                          "IntegrityError", "Duplicate entry"))


def log_plots(model_metrics: dict, baseline: dict, ks, popularity: np.ndarray, history, refinement=()) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        plots.quality_vs_k(model_metrics, baseline, ks, out / "quality_vs_k.png")
        plots.popularity_long_tail(popularity, out / "item_popularity_long_tail.png")
        plots.convergence(history, out / "convergence.png")
        if refinement:
            plots.convergence(refinement, out / "confidence_refinement.png", title="Confidence-weighted refinement",
                              xlabel="sweep", ylabel="weighted loss")
        mlflow.log_artifacts(str(out), artifact_path="plots")


def pip_requirements() -> list[str]:
    import scipy
    import sklearn

    return [f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}", f"scipy=={scipy.__version__}",
            f"scikit-learn=={sklearn.__version__}", f"pandas=={pd.__version__}"]


def log_pyfunc(model: NMFRecommender, artifact_dir: Path, registered_model_name: str | None):
    """Log the model from code (no pickled python model), with signature and input example."""
    sample_users = model.users.externals(np.arange(min(3, model.n_users)))
    example = pd.DataFrame({"user_id": sample_users})
    answers = model.recommend_ids(sample_users, 10)
    output = pd.DataFrame({
        "user_id": sample_users,
        "item_ids": [a["item_ids"] for a in answers],
        "scores": [a["scores"] for a in answers],
        "strategy": [a["strategy"] for a in answers],
    })
    with expected_warnings_silenced():
        signature = infer_signature(example, output, params={"k": 10, "exclude_seen": True})
        return _log_model(example, signature, artifact_dir, registered_model_name)


def _log_model(example, signature, artifact_dir: Path, registered_model_name: str | None):
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(PYFUNC_CODE),
        artifacts={ARTIFACT_KEY: str(artifact_dir)},
        code_paths=[str(CORE_PACKAGE)],
        signature=signature,
        input_example=example,
        pip_requirements=pip_requirements(),
        registered_model_name=registered_model_name,
    )
