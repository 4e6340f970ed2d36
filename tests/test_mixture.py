"""flopmatch.mixture: the family scenarios of Forecaster's intervals (the formulas are tested in test_advise)."""

import itertools

import numpy as np
import pandas as pd
import pytest

from flopmatch.forecast import plausible_fits
from flopmatch.mixture import AllocationError, Forecaster
from flopmatch.pilot import ModelCost, PilotModel

ALLOCATIONS = [(8, 0), (4, 4), (0, 8)]


def _pilots(problems: int = 40) -> list[PilotModel]:
    rng = np.random.default_rng(11)
    p = np.where(rng.random(problems) < 0.3, 0.0, rng.beta(0.5, 1.5, problems))
    out = []
    for name, seed in (("a", 1), ("b", 2)):
        c = np.random.default_rng(seed).binomial(4, p)
        frame = pd.DataFrame({"problem_id": [f"q{i}" for i in range(problems)], "n": 4, "c": c,
                              "unique_correct": np.minimum(c, 2)})  # fmt: skip
        out.append(PilotModel(name, frame, ModelCost(name, 10, 100, 1.0, 160)))
    return out


@pytest.mark.parametrize(
    ("objective", "point", "bounds"),
    [
        ("coverage", [0.3214161055, 0.3863524684, 0.3247278833],
         [0.198553186, 0.26827474, 0.2125930979, 0.4281673299, 0.5056657626, 0.4491478375]),
        ("unique", [0.7409678072, 0.958963376, 0.6831780611],
         [0.4570186023, 0.6903752961, 0.4781876633, 0.9885122631, 1.324295635, 0.9622629379]),
    ],
)  # fmt: skip
def test_refit_intervals_are_the_single_family_bootstrap_of_before(objective, point, bounds):
    """Numbers computed with the forecaster before family scenarios existed (commit 6514b73)."""
    result = Forecaster(_pilots(), n_problems=100, n_boot=30, seed=3, objective=objective,
                        intervals="refit").evaluate(ALLOCATIONS)  # fmt: skip
    assert result.boot.shape == (1, 30, 3)
    assert np.allclose(result.point, point, atol=1e-9)
    assert np.allclose(np.ravel(result.interval()), bounds, atol=1e-9)


def test_family_scenarios_are_every_combination_of_each_models_plausible_families():
    pilots = _pilots()
    forecaster = Forecaster(pilots, n_problems=100, n_boot=10, seed=3)
    families = []
    for m in forecaster.models:
        assert list(m.fits)[0] == m.fit.family
        assert set(m.fits) == set(plausible_fits(m.fit, m.n, m.c, 3))
        families.append(list(m.fits))
    assert forecaster.scenarios == list(itertools.product(*families))
    assert len(forecaster.scenarios) > 1  # this pilot cannot rule out a second family: the test needs one


def test_the_union_holds_the_chosen_familys_interval_and_the_point_does_not_move():
    pilots = _pilots()
    refit = Forecaster(pilots, n_problems=100, n_boot=30, seed=3, intervals="refit").evaluate(ALLOCATIONS)
    union = Forecaster(pilots, n_problems=100, n_boot=30, seed=3).evaluate(ALLOCATIONS)
    assert np.array_equal(union.point, refit.point)
    assert np.array_equal(union.boot[0], refit.boot[0])  # scenario 0: every model's chosen family, exactly
    (lo, hi), (rlo, rhi) = union.interval(), refit.interval()
    assert np.all(lo <= rlo) and np.all(hi >= rhi)
    assert np.any(lo < rlo) or np.any(hi > rhi)
    dlo, dhi = union.difference(1, 0)
    rdlo, rdhi = refit.difference(1, 0)
    assert dlo <= rdlo and dhi >= rdhi
    for s in range(len(union.scenarios)):  # the union is over every scenario's paired difference
        diffs = union.boot[s, :, 1] - union.boot[s, :, 0]
        assert dlo <= np.percentile(diffs, 2.5) and dhi >= np.percentile(diffs, 97.5)


@pytest.mark.parametrize("objective", ["coverage", "unique"])
def test_chosen_families_is_the_refit_forecaster_from_the_same_bootstrap(objective, monkeypatch):
    """The "refit" numbers are scenario 0 of the families bootstrap: chosen_families takes them from the
    families forecaster's evaluation (no second bootstrap) and they equal a refit Forecaster's exactly."""
    pilots = _pilots()
    refit = Forecaster(pilots, n_problems=100, n_boot=30, seed=3, objective=objective, intervals="refit")
    expected = refit.evaluate(ALLOCATIONS)
    union = Forecaster(pilots, n_problems=100, n_boot=30, seed=3, objective=objective)
    whole = union.evaluate(ALLOCATIONS)
    chosen = union.chosen_families()
    assert [list(m.fits) for m in chosen.models] == [list(m.fits) for m in refit.models]
    assert [list(m.fits) for m in union.models] != [list(m.fits) for m in refit.models]  # the union untouched
    monkeypatch.setattr(Forecaster, "_values", lambda *a: pytest.fail("evaluated a second time"))
    assert union.evaluate(ALLOCATIONS) is whole  # the same allocations again: the evaluation made
    result = chosen.evaluate(ALLOCATIONS)
    assert result.scenarios == expected.scenarios == [whole.scenarios[0]]
    assert np.array_equal(result.point, expected.point) and np.array_equal(result.boot, expected.boot)
    assert np.array_equal(result.difference(1, 0), expected.difference(1, 0))


def test_an_unknown_interval_mode_is_refused():
    with pytest.raises(AllocationError, match="unknown intervals 'wide'"):
        Forecaster(_pilots(), n_problems=100, intervals="wide")
