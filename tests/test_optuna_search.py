"""Optuna's samplers as baselines: distinct canonical designs, batches, constraints, seeds."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest

from search import optuna_search as optuna_module
from search.evaluate import Evaluator
from search.nsga import SearchResult
from search.optuna_search import optuna_search
from sim import Scenario, scenario_from_dict

from .test_baselines import ARCH, config, quiet_three_tier

optuna = pytest.importorskip("optuna")

# One architecture, searched for its route and split only (36 designs on three tiers): one
# training for the whole file, through the shared cache.
SPLIT_ONLY = {"architecture": ARCH, "compression": False, "population": 4,
              "hv_error_ref": 0.95}  # the tiny budget stays near chance: let it count


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("optuna") / "acc.sqlite")


@pytest.fixture
def studies(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The studies the search creates, to read what Optuna was told."""
    made: list[Any] = []
    create = optuna.create_study

    def keep(*args: Any, **kwargs: Any) -> Any:
        made.append(create(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(optuna, "create_study", keep)
    return made


def run(scenario: Scenario, sampler: str, evaluations: int, out: Path, cache: str,
        **changes: Any) -> SearchResult:
    cfg = config(**{**SPLIT_ONLY, **changes})
    return optuna_search(scenario, cfg, evaluations, out, sampler=sampler,  # type: ignore[arg-type]
                         cache_path=cache, map_fn=map)


def told(study: Any, layout: Any) -> list[tuple[tuple[int, ...], Any]]:
    """(canonical genome, trial) for every trial of the study."""
    return [(layout.canonical([t.params[f"g{i}"] for i in range(layout.n_genes)]), t)
            for t in study.trials]


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_sampler_evaluates_distinct_designs_in_batches(sampler: str, tmp_path: Path,
                                                       cache: str, studies: list[Any]) -> None:
    s = quiet_three_tier()
    r = run(s, sampler, 10, tmp_path / "a", cache)
    layout = Evaluator(s, r.config, ":memory:").layout
    assert len(r.evaluations) == 10
    for g, ev in r.evaluations.items():
        assert ev.genome == g == layout.canonical(g)
        assert layout.decode(g).describe() == ev.design and ev.feasible
    assert [row["evaluations"] for row in r.history] == [4, 8, 10]  # population, then the rest
    assert [row["generation"] for row in r.history] == [0, 1, 2]
    hv = [row["hypervolume"] for row in r.history]
    assert hv[0] > 0 and hv == sorted(hv)
    assert r.population == list(r.evaluations)[-4:]
    study = studies[0]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    trials = told(study, layout)
    assert len(trials) >= 10 and {g for g, _ in trials} == set(r.evaluations)
    for g, t in trials:  # duplicates too were told the values of their design
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert t.values == list(r.evaluations[g].objectives(r.config))
        assert t.constraints == {"violation": 0.0}
    again = run(s, sampler, 10, tmp_path / "b", cache)  # same seed, same designs, same order
    assert list(again.evaluations.items()) == list(r.evaluations.items())
    assert len(studies[1].trials) == len(trials)
    other = run(s, sampler, 10, tmp_path / "c", cache, seed=1)
    assert list(other.evaluations) != list(r.evaluations)


def test_infeasible_designs_are_told_as_infeasible(tmp_path: Path, cache: str,
                                                  studies: list[Any]) -> None:
    d = quiet_three_tier().model_dump()
    d["nodes"]["phone"]["memory_bytes"] = 2e5  # 200 kB: the first block fits, two do not
    s = scenario_from_dict(d)  # 21 of the 36 designs are infeasible
    r = run(s, "tpe", 8, tmp_path, cache)
    statuses = [e.status for e in r.evaluations.values()]
    assert "infeasible" in statuses and "ok" in statuses, statuses
    layout = Evaluator(s, r.config, ":memory:").layout
    for g, t in told(studies[0], layout):
        ev = r.evaluations[g]
        assert t.constraints["violation"] == ev.violation
        on_phone = layout.decode(g).cuts[0].position
        assert (ev.violation > 0) == (ev.status == "infeasible") == (on_phone > 1)
        assert all(math.isfinite(v) for v in t.values)  # its objectives may be NaN: not these
        assert t.user_attrs == {"design": ev.design, "status": ev.status}


def test_tries_are_capped_when_the_space_runs_out(tmp_path: Path, cache: str,
                                                  studies: list[Any],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optuna_module, "MAX_TRIES_PER_EVALUATION", 2)
    r = run(quiet_three_tier(), "nsga2", 50, tmp_path, cache)  # 36 designs in the space
    assert len(studies[0].trials) == 100 and len(r.evaluations) <= 36
    assert r.history[-1]["evaluations"] == len(r.evaluations)


def test_refuses_unknown_samplers_and_a_missing_optuna(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="sampler must be one of tpe, nsga2, got 'cmaes'"):
        run(quiet_three_tier(), "cmaes", 4, tmp_path, ":memory:")
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    with pytest.raises(ValueError, match=r"needs the compare extra: pip install -e '\.\[compare"):
        run(quiet_three_tier(), "tpe", 4, tmp_path, ":memory:")
