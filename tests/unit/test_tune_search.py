"""`timbral tune`'s neighbourhood search: one knob moved per trial, one step on ordered scales, no repeats."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

from timbral.params import NMFParams
from training.pipeline import TrainConfig
from training.tune import ORDERED, SEARCH_SPACE, _key, neighbour_params, run_tuning


def moved(a: NMFParams, b: NMFParams) -> dict:
    da, db = asdict(a), asdict(b)
    return {k: (da[k], db[k]) for k in da if da[k] != db[k]}


def test_a_neighbour_moves_exactly_one_knob_one_step_from_the_defaults():
    best = NMFParams()
    rng = np.random.default_rng(1)
    seen_moves = set()
    for _ in range(300):
        candidate = neighbour_params(rng, best, {_key(best)})
        (name, (old, new)), = moved(best, candidate).items()
        assert name in SEARCH_SPACE and new in SEARCH_SPACE[name]
        if name in ORDERED:
            at = SEARCH_SPACE[name].index(old)
            assert SEARCH_SPACE[name].index(new) in (at - 1, at + 1), (name, old, new)
        seen_moves.add((name, new))
    # every knob moves sometimes; 64 components go to 32 or 96, alpha_W 1e-3 to 5e-4 or 1.5e-3
    assert {n for n, _ in seen_moves} == set(SEARCH_SPACE)
    assert {v for n, v in seen_moves if n == "n_components"} == {32, 96}
    assert {v for n, v in seen_moves if n == "alpha_W"} == {5e-4, 1.5e-3}


def test_neighbours_never_repeat_a_tried_setting_and_the_search_is_seeded():
    def walk(seed: int) -> list[tuple]:
        rng, best, tried = np.random.default_rng(seed), NMFParams(), {_key(NMFParams())}
        keys = []
        for _ in range(25):
            candidate = neighbour_params(rng, best, tried)
            assert _key(candidate) not in tried
            tried.add(_key(candidate))
            keys.append(_key(candidate))
        return keys

    assert walk(3) == walk(3)
    assert walk(3) != walk(4)


def test_alpha_h_same_and_alpha_h_equal_to_alpha_w_are_one_setting():
    assert _key(NMFParams(alpha_W=1e-3, alpha_H="same")) == _key(NMFParams(alpha_W=1e-3, alpha_H=0.001))
    assert _key(NMFParams(alpha_W=1e-3, alpha_H="same")) != _key(NMFParams(alpha_W=1e-3, alpha_H=3e-3))
    best = NMFParams(alpha_W=1e-3)  # alpha_H "same": the neighbour alpha_H=1e-3 would fit the same model again
    rng = np.random.default_rng(0)
    for _ in range(100):
        candidate = neighbour_params(rng, best, {_key(best)}, space={"alpha_H": ["same", 0.0, 1e-3, 3e-3]})
        assert candidate.alpha_H in (0.0, 3e-3)


def test_an_unlisted_value_moves_to_the_nearest_listed_one():
    best = NMFParams(n_components=70)
    candidate = neighbour_params(np.random.default_rng(0), best, {_key(best)}, space={"n_components": [16, 64, 128]})
    assert candidate.n_components == 64


def test_when_every_neighbour_was_tried_a_random_draw_stands_in():
    best = NMFParams(n_components=64)
    space = {"n_components": [64, 96]}
    tried = {_key(best), _key(NMFParams(n_components=96))}
    candidate = neighbour_params(np.random.default_rng(0), best, tried, space=space)
    assert candidate.n_components in (64, 96)  # a valid setting, not an endless loop


def test_an_unknown_search_is_refused_before_anything_runs():
    with pytest.raises(ValueError, match=r"search must be one of neighbours, random \(got 'grid'\)"):
        run_tuning(TrainConfig(data="unused.csv"), search="grid")
