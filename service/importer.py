"""Registry → BentoML model store: ``timbral import-model [--model-uri models:/timbral-nmf@champion]``.

Resolves ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` with the MLflow client (tracking server from
``MLFLOW_TRACKING_URI``), downloads the version's files, verifies the core artifact
(``artifacts/timbral/``: sha256 of every file, then a full load) and only then copies its three files into a
new store model under a stable name, labelled with the registry name, version, alias, run id, checksum and
headline metrics. Importing the same registry version (same checksum) again returns the existing store model.
Any failure — registry, S3, checksum — leaves the store unchanged.

MLflow is imported lazily, here only: the served bento does not ship it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from service.catalog import (
    LABEL_ALIAS,
    LABEL_CHECKSUM,
    LABEL_REGISTRY_NAME,
    LABEL_REGISTRY_VERSION,
    LABEL_RUN_ID,
)
from timbral.artifact import ARRAYS_FILE, CHECKSUMS_FILE, METADATA_FILE

DEFAULT_MODEL_URI = "models:/timbral-nmf@champion"
DEFAULT_BENTO_NAME = "timbral-nmf"
ARTIFACT_SUBDIR = ("artifacts", "timbral")
LABEL_METRICS = ("ndcg_at_10", "recall_at_10", "precision_at_10")
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))/?$")


class ImportModelError(RuntimeError):
    """The import failed; the message is one line saying why. The model store is unchanged."""


@dataclass
class ImportResult:
    tag: str
    created: bool
    registry_name: str
    registry_version: str
    alias: str | None
    run_id: str | None
    checksum: str
    metrics: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        what = "imported" if self.created else "already imported"
        alias = f"@{self.alias} = " if self.alias else ""
        ndcg = self.metrics.get("ndcg_at_10")
        extra = f", ndcg@10 {ndcg:.4f}" if ndcg is not None else ""
        return (f"{what} models:/{self.registry_name} ({alias}version {self.registry_version}, run {self.run_id}"
                f"{extra}) as {self.tag}")


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``(name, version, alias)`` of ``models:/name@alias`` or ``models:/name/version``."""
    match = _URI.match(uri.strip())
    if not match:
        raise ImportModelError(f"model URI {uri!r} is not models:/<name>@<alias> or models:/<name>/<version>")
    return match["name"], match["version"], match["alias"]


def label_value(value: Any) -> str:
    """A label value that store and cluster tooling accept: ``[A-Za-z0-9._-]``, at most 63 characters."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", str(value))[:63].strip("-._")
    return text or "none"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip(": ")


def artifact_checksum(directory: Path) -> str:
    """One digest for the artifact: sha256 of its checksum list (which covers every file)."""
    sums = json.loads((directory / CHECKSUMS_FILE).read_text())
    return hashlib.sha256(json.dumps(sums, sort_keys=True).encode()).hexdigest()


def _resolve(client, name: str, version: str | None, alias: str | None):
    from mlflow.exceptions import MlflowException

    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException as exc:
        wanted = f"alias {alias!r}" if alias else f"version {version}"
        raise ImportModelError(f"registry: no {wanted} of model {name!r} ({_one_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - connection refused, DNS, TLS… all mean "registry unreachable"
        import mlflow

        raise ImportModelError(f"registry at {mlflow.get_tracking_uri()} unreachable ({_one_line(exc)})") from None


def _run_metrics(client, run_id: str | None, fallback: dict) -> dict[str, float]:
    if run_id:
        try:
            return {k: float(v) for k, v in client.get_run(run_id).data.metrics.items()}
        except Exception:  # noqa: BLE001 - the run may be deleted; the artifact's own metrics still hold
            pass
    return {k: float(v) for k, v in (fallback or {}).items() if isinstance(v, (int, float))}


def find_existing(bento_name: str, registry_name: str, registry_version: str, checksum: str):
    """A store model imported from the same registry version with the same artifact checksum, or None."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        candidates = bentoml.models.list(bento_name)
    except NotFound:
        return None
    for model in candidates:
        labels = model.info.labels
        if (labels.get(LABEL_REGISTRY_NAME) == label_value(registry_name)
                and labels.get(LABEL_REGISTRY_VERSION) == label_value(registry_version)
                and labels.get(LABEL_CHECKSUM) == label_value(checksum[:40])):
            return model
    return None


def import_model(model_uri: str = DEFAULT_MODEL_URI, bento_name: str = DEFAULT_BENTO_NAME) -> ImportResult:
    name, version, alias = parse_model_uri(model_uri)
    import mlflow
    from mlflow import MlflowClient

    from timbral.artifact import ArtifactError, verify_artifact
    from timbral.nmf import NMFRecommender

    client = MlflowClient()
    mv = _resolve(client, name, version, alias)
    with tempfile.TemporaryDirectory(prefix="timbral-import-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}", dst_path=tmp))
        except Exception as exc:  # noqa: BLE001 - S3 or proxy failures of every kind
            raise ImportModelError(f"download of models:/{name}/{mv.version} failed ({_one_line(exc)})") from None
        artifact = local.joinpath(*ARTIFACT_SUBDIR)
        if not artifact.is_dir():
            raise ImportModelError(f"models:/{name}/{mv.version} has no {'/'.join(ARTIFACT_SUBDIR)}/ directory; "
                                   "not a Timbral model")
        try:
            verify_artifact(artifact)
            metadata = NMFRecommender.load(artifact).metadata
        except (ArtifactError, KeyError, ValueError, OSError) as exc:
            raise ImportModelError(f"models:/{name}/{mv.version}: artifact rejected ({_one_line(exc)})") from None
        checksum = artifact_checksum(artifact)
        metrics = _run_metrics(client, mv.run_id, metadata.get("metrics", {}))
        existing = find_existing(bento_name, name, str(mv.version), checksum)
        if existing is not None:
            return ImportResult(str(existing.tag), False, name, str(mv.version), alias, mv.run_id, checksum, metrics)
        labels = {LABEL_REGISTRY_NAME: label_value(name), LABEL_REGISTRY_VERSION: label_value(mv.version),
                  LABEL_ALIAS: label_value(alias or "none"), LABEL_RUN_ID: label_value(mv.run_id or "none"),
                  LABEL_CHECKSUM: label_value(checksum[:40])}
        labels.update({m.replace("_", "-"): label_value(f"{metrics[m]:.6f}") for m in LABEL_METRICS if m in metrics})
        store_metadata = {
            "registry_uri": f"models:/{name}/{mv.version}", "registry_alias": alias or "",
            "run_id": mv.run_id or "", "artifact_sha256": checksum, "trained_at": str(metadata.get("trained_at", "")),
            "data_digest": str(metadata.get("data_digest", "")), "n_users": int(metadata.get("n_users", 0)),
            "n_items": int(metadata.get("n_items", 0)), "n_factors": int(metadata.get("n_factors", 0)),
            "metrics": metrics,
            "baseline_metrics": {k: float(v) for k, v in (metadata.get("baseline_metrics") or {}).items()
                                 if isinstance(v, (int, float))},
        }
        import bentoml

        with bentoml.models.create(bento_name, labels=labels, metadata=store_metadata) as stored:
            for filename in (ARRAYS_FILE, METADATA_FILE, CHECKSUMS_FILE):
                shutil.copy2(artifact / filename, Path(stored.path) / filename)
            verify_artifact(stored.path)  # the copy is what will be served: check it before the store keeps it
        return ImportResult(str(stored.tag), True, name, str(mv.version), alias, mv.run_id, checksum, metrics)


@click.command("import-model")
@click.option("--model-uri", default=DEFAULT_MODEL_URI, show_default=True,
              help="Registered model: models:/<name>@<alias> or models:/<name>/<version>.")
@click.option("--name", "bento_name", default=DEFAULT_BENTO_NAME, show_default=True,
              help="Name in the BentoML model store (the service serves MODEL_TAG, default <name>:latest).")
def import_model_command(model_uri: str, bento_name: str) -> None:
    """Copy a registered model version into the BentoML model store (a no-op if already there)."""
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")  # no usage reporting from a CLI import
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line of output, not a bar
    try:
        result = import_model(model_uri, bento_name)
    except ImportModelError as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - anything else still ends in one line, not a traceback
        raise click.ClickException(f"import failed ({_one_line(exc)})") from None
    click.echo(result.summary())
