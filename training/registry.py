"""The MLflow Model Registry side: promotion gate, promote, rollback. Aliases only (stages are deprecated).

Concurrency: MLflow has no compare-and-set, so alias moves (gate + promote, promote, rollback) run under a
lease kept in the registered model's tag ``promotion_lock``: a writer sets ``<token> <expiry>``, waits
``settle`` seconds, and proceeds only if its token is still there; others retry until the lease is released
or expires. Two writers whose read-then-write round trips both fit inside the settle window cannot both
proceed, so concurrent ``timbral train`` runs are serialised at the gate and the better model ends as
champion. The guarantee rests on that timing (default settle 0.5 s vs a registry round trip of a few ms).

The registered model keeps the champion history in its tag ``champion_history`` (a JSON list of versions, oldest
first); ``rollback`` moves ``champion`` back to the entry before the current one and drops the current one from
the history. Each version carries tags with its headline metrics, so the gate compares without reading runs.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
import uuid
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"
LOCK_TAG = "promotion_lock"
PROMOTE_MODES = ("auto", "always", "never")


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (unknown model/version, no previous champion, …)."""


@dataclass
class GateDecision:
    alias: str  # "champion" or "challenger"
    reason: str
    champion_version: str | None
    champion_value: float | None
    new_value: float | None


def metric_tag(metric: str) -> str:
    return f"metric.{metric}"


def current_champion(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def version_metric(client: MlflowClient, version, metric: str) -> float | None:
    tag = (version.tags or {}).get(metric_tag(metric))
    if tag is not None:
        return float(tag)
    if version.run_id:
        value = client.get_run(version.run_id).data.metrics.get(metric)
        return None if value is None else float(value)
    return None


def decide(client: MlflowClient, name: str, version: str, metric: str = "ndcg_at_10", margin: float = 0.0,
           mode: str = "auto") -> GateDecision:
    """Champion if ``mode`` is always, or (auto) if the new value ≥ the champion's + ``margin``."""
    if mode not in PROMOTE_MODES:
        raise RegistryError(f"promote mode must be one of {', '.join(PROMOTE_MODES)}; got {mode!r}")
    new = client.get_model_version(name, version)
    new_value = version_metric(client, new, metric)
    champ = current_champion(client, name)
    champ_value = version_metric(client, champ, metric) if champ is not None else None
    champ_version = champ.version if champ is not None else None
    if mode == "always":
        return GateDecision(CHAMPION, "promotion forced (--promote always)", champ_version, champ_value, new_value)
    if mode == "never":
        return GateDecision(CHALLENGER, "promotion disabled (--promote never)", champ_version, champ_value, new_value)
    if champ is None:
        return GateDecision(CHAMPION, "no champion yet", None, None, new_value)
    if new_value is None:
        return GateDecision(CHALLENGER, f"version {version} has no {metric}", champ_version, champ_value, None)
    if champ_value is None or new_value >= champ_value + margin:
        return GateDecision(
            CHAMPION,
            f"{metric} {new_value:.4f} >= champion v{champ_version}'s {champ_value if champ_value is not None else float('nan'):.4f}"
            f" + margin {margin:g}",
            champ_version, champ_value, new_value,
        )
    return GateDecision(
        CHALLENGER,
        f"{metric} {new_value:.4f} < champion v{champ_version}'s {champ_value:.4f} + margin {margin:g}",
        champ_version, champ_value, new_value,
    )


@contextlib.contextmanager
def promotion_lock(client: MlflowClient, name: str, timeout: float = 120.0, lease: float = 60.0, settle: float = 0.5):
    """Hold the registered model's promotion lease (see the module docstring)."""
    token = uuid.uuid4().hex
    deadline = time.monotonic() + timeout
    refused: MlflowException | None = None
    while True:
        holder = (client.get_registered_model(name).tags or {}).get(LOCK_TAG, "")
        owner, _, expiry = holder.partition(" ")
        if not owner or float(expiry or 0) < time.time():
            try:
                client.set_registered_model_tag(name, LOCK_TAG, f"{token} {time.time() + lease:.3f}")
            except MlflowException as exc:
                # two writers inserting the tag at once: the store's unique key refuses one (seen with sqlite:
                # "UNIQUE constraint failed: registered_model_tags…"). The other writer got there: wait, look again.
                refused = exc
            else:
                time.sleep(settle)
                if (client.get_registered_model(name).tags or {}).get(LOCK_TAG, "").startswith(token):
                    break
        if time.monotonic() > deadline:
            last = f"; the last attempt to take it failed: {refused}" if refused else ""
            raise RegistryError(f"model '{name}': promotion lock held by another writer for {timeout:.0f}s "
                                f"(tag {LOCK_TAG}={holder!r}){last}; retry, or delete the tag if that writer died")
        time.sleep(random.uniform(0.1, 0.4))
    try:
        yield
    finally:
        with contextlib.suppress(MlflowException):
            if (client.get_registered_model(name).tags or {}).get(LOCK_TAG, "").startswith(token):
                client.delete_registered_model_tag(name, LOCK_TAG)


def gate_and_alias(client: MlflowClient, name: str, version: str, metric: str = "ndcg_at_10", margin: float = 0.0,
                   mode: str = "auto") -> GateDecision:
    """Decide and move the alias under the promotion lock: champion if the gate passes, else challenger."""
    with promotion_lock(client, name):
        decision = decide(client, name, version, metric, margin, mode)
        if decision.alias == CHAMPION:
            promote(client, name, version)
        else:
            mark_challenger(client, name, version)
    return decision


def champion_history(client: MlflowClient, name: str) -> list[str]:
    tags = client.get_registered_model(name).tags or {}
    try:
        return [str(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]
    except ValueError:
        return []


def check_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise RegistryError(f"no registered model named '{name}' at {client.tracking_uri}") from None


def _check_version(client: MlflowClient, name: str, version: str):
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"model '{name}' has no version {version} ({exc.error_code})") from None


def promote(client: MlflowClient, name: str, version: str) -> str | None:
    """Point ``champion`` at ``version``; return the previous champion's version (or None)."""
    _check_version(client, name, version)
    previous = current_champion(client, name)
    history = champion_history(client, name)
    if previous is not None and (not history or history[-1] != previous.version):
        history.append(previous.version)  # a champion set outside this tool: keep it rollback-able
    if not history or history[-1] != str(version):
        history.append(str(version))
    client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    try:
        challenger = client.get_model_version_by_alias(name, CHALLENGER)
        if challenger.version == str(version):
            client.delete_registered_model_alias(name, CHALLENGER)
    except MlflowException:
        pass
    return previous.version if previous is not None else None


def mark_challenger(client: MlflowClient, name: str, version: str) -> None:
    _check_version(client, name, version)
    client.set_registered_model_alias(name, CHALLENGER, str(version))


def rollback(client: MlflowClient, name: str) -> tuple[str, str]:
    """Move ``champion`` back to the previous champion: returns ``(from_version, to_version)``."""
    champ = current_champion(client, name)
    if champ is None:
        raise RegistryError(f"model '{name}' has no champion to roll back")
    history = champion_history(client, name)
    while history and history[-1] != champ.version:
        history.pop()  # entries after the current champion are stale
    if len(history) < 2:
        raise RegistryError(f"model '{name}': champion v{champ.version} has no previous champion to roll back to")
    history.pop()
    target = history[-1]
    _check_version(client, name, target)
    client.set_registered_model_alias(name, CHAMPION, target)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    return champ.version, target
