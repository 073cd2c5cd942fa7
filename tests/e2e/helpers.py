"""Helpers for tests that serve a model: fit a small model, put it in a BentoML store, run `bentoml serve`.

* ``fit_small_model`` fits an ``NMFRecommender`` in-process on structured synthetic listens (a few taste groups)
  in well under a second.
* ``store_model`` writes a fitted model into the BentoML model store of the current process
  (``BENTOML_HOME``), labelled like ``service.importer`` labels registry imports.
* ``BentoServer`` runs ``bentoml serve`` (production mode) as a subprocess on a free loopback port with its own
  environment and ``BENTOML_HOME``, waits for ``/readyz`` and stops the whole process group.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from training.local_stack import free_port, stop_process

REPO = Path(__file__).resolve().parents[2]


def small_listens(n_users: int = 60, n_items: int = 40, groups: int = 4, seed: int = 0, int_ids: bool = False):
    """(users, items, values): every user listens mostly within their taste group."""
    rng = np.random.default_rng(seed)
    users, items, values = [], [], []
    per_group = n_items // groups
    for u in range(n_users):
        g = u % groups
        own = np.arange(g * per_group, (g + 1) * per_group)
        chosen = rng.choice(own, size=max(2, per_group // 2), replace=False)
        chosen = np.concatenate([chosen, rng.choice(n_items, size=2, replace=False)])
        for i in np.unique(chosen):
            users.append(str(u) if int_ids else f"u{u}")
            items.append(str(i) if int_ids else f"i{i}")
            values.append(float(rng.integers(1, 20)))
    return np.array(users), np.array(items), np.array(values)


def fit_small_model(n_users: int = 60, n_items: int = 40, seed: int = 0, int_ids: bool = False, n_components: int = 8):
    from timbral.interactions import Interactions
    from timbral.nmf import NMFRecommender

    users, items, values = small_listens(n_users, n_items, seed=seed, int_ids=int_ids)
    data = Interactions.from_arrays(users, items, values)
    model = NMFRecommender(n_components=n_components, max_iter=200, random_state=seed).fit(data)
    model.metadata.update({"model_name": "timbral-nmf", "run_id": f"test-run-{seed}",
                           "trained_at": "2024-01-01T00:00:00+00:00", "metrics": {"ndcg_at_10": 0.5},
                           "baseline_metrics": {"ndcg_at_10": 0.25}, "data_digest": f"seed-{seed}"})
    return model


def store_model(model, bentoml_home: str | Path, name: str = "timbral-nmf", version: str = "1",
                alias: str = "champion") -> str:
    """Save ``model`` into the BentoML store under ``bentoml_home``; returns the tag (``name:<store version>``).

    The store is passed explicitly, so the process-wide BentoML store (fixed at its first use) does not matter.
    Labels are those ``service.importer`` writes, with ``version`` as the registry version.
    """
    import bentoml
    from bentoml._internal.models import ModelStore

    from service.catalog import LABEL_ALIAS, LABEL_REGISTRY_NAME, LABEL_REGISTRY_VERSION, LABEL_RUN_ID

    store = ModelStore(Path(bentoml_home) / "models")
    labels = {LABEL_REGISTRY_NAME: name, LABEL_REGISTRY_VERSION: str(version), LABEL_ALIAS: alias,
              LABEL_RUN_ID: str(model.metadata.get("run_id", "none"))}
    with bentoml.models.create(name, labels=labels, metadata={"source": "tests"}, _model_store=store) as stored:
        model.save(stored.path)
    return str(stored.tag)


class BentoServer:
    """``bentoml serve TARGET`` on a free port; ``url``, ``stop()``, and a log file for failures."""

    def __init__(self, target: str, bentoml_home: Path, env: dict[str, str] | None = None,
                 workdir: Path = REPO, log_path: Path | None = None) -> None:
        self.target, self.bentoml_home, self.workdir = target, Path(bentoml_home), Path(workdir)
        self.port = free_port()
        self.extra_env = dict(env or {})
        self.log_path = log_path or self.bentoml_home / f"serve-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BENTOML_", "PROMETHEUS_"))}
        env.update({"BENTOML_HOME": str(self.bentoml_home), "BENTOML_DO_NOT_TRACK": "true",
                    "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 120.0) -> BentoServer:
        bentoml_bin = str(Path(sys.executable).parent / "bentoml")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [bentoml_bin, "serve", self.target, "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=self.workdir, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            self.wait_ready(timeout)
        except Exception:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise RuntimeError(f"bentoml serve not ready within {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self, grace: float = 15.0) -> None:
        """Stop the server and all its workers (they run in sessions of their own)."""
        stop_process(self.proc, grace)

    def __enter__(self) -> BentoServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
