"""Fixtures of the unit tests that drive the BentoML service classes in-process."""

from __future__ import annotations

import pytest

from service.settings import get_settings
from tests.e2e.helpers import fit_small_model, store_model


@pytest.fixture(scope="session")
def inprocess_store(tmp_path_factory):
    """(store home, tag, the fitted core model): one for the session, because the service classes bind the
    model tag once, when ``service`` is first imported."""
    home = tmp_path_factory.mktemp("bentoml-inprocess")
    core = fit_small_model(seed=4)
    return home, store_model(core, home, version="7"), core


@pytest.fixture(scope="module")
def stack(inprocess_store):
    """(Timbral instance, TimbralModel instance, the fitted core model) over a throwaway model store."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    home, tag, core = inprocess_store
    patch = pytest.MonkeyPatch()
    patch.setenv("MODEL_TAG", tag)
    patch.setenv("ENABLE_CACHING", "false")
    patch.setenv("RATE_LIMIT_ENABLED", "false")  # no Redis here: the limiter's /health ping would look for one
    get_settings.cache_clear()
    BentoMLContainer.model_store.set(ModelStore(home / "models"))
    try:
        from service import Timbral, TimbralModel

        yield Timbral(), TimbralModel(), core
    finally:
        BentoMLContainer.model_store.reset()
        patch.undo()
        get_settings.cache_clear()
