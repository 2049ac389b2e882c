"""What a study's next trial tries, and when a trial stops early: the sampler, seeded for each trial, and the pruner.

Every worker of a study (each `deepcourse tune` on one study, each task of a Slurm array, the same study resumed
later) builds its sampler from the same recipe. Seeded with the recipe's seed alone, each of them drew the same
start-up points: two workers ran 4 trials of 2 configurations, an array of 16 ran each point 16 times, and a resumed
study drew trial 0's parameters again. The sampler is seeded for each trial instead, from the recipe's seed and the
trial's number, which the storage hands out once per study: no two trials of a study share a seed, whichever worker
takes them, and a study run by one worker is still the same study every time. What the samplers learn (TPE's model,
CMA-ES's state) they read from the storage, so a fresh sampler per trial loses nothing. A grid's points are queued
in order and never drawn; QMC walks one sequence for all its workers, as Optuna asks (its scrambling seed stays the
recipe's, and the storage keeps its next index), and draws only what it cannot place (choices) per trial.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.samplers import BaseSampler

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.trial import FrozenTrial, TrialState

    from deepcourse.studies.spec import StudySpec


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial `number` of a study whose recipe has `seed`: well spread, the same on every machine."""
    import numpy as np

    return int(np.random.SeedSequence([seed % 2**32, number]).generate_state(1)[0])


class PerTrialSeed(BaseSampler):
    """A sampler made afresh, seeded by `trial_seed`, for each trial (one per thread: a worker's `-j N` threads
    share one study object, and each asks and tells its own trials)."""

    def __init__(self, make: Callable[[int], BaseSampler], seed: int) -> None:
        self._make, self._seed = make, seed
        self._local = threading.local()

    @property
    def _sampler(self) -> BaseSampler:
        sampler: BaseSampler | None = getattr(self._local, "sampler", None)
        if sampler is None:
            sampler = self._local.sampler = self._make(self._seed)
        return sampler

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._local.sampler = self._make(trial_seed(self._seed, trial.number))
        self._local.sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
                        ) -> dict[str, Any]:
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._sampler.reseed_rng()


def sampler_of(spec: StudySpec) -> BaseSampler:
    """The study's sampler, seeded per trial (`PerTrialSeed`)."""
    samplers: dict[str, Callable[[int], BaseSampler]] = {
        "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed),  # constant_liar: running trials count as bad
        "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
        "grid": lambda seed: optuna.samplers.RandomSampler(seed=seed),  # every point is queued: nothing to draw
        "cmaes": lambda seed: optuna.samplers.CmaEsSampler(seed=seed),
        "qmc": lambda seed: optuna.samplers.QMCSampler(seed=spec.seed, warn_asynchronous_seeding=False,
                                                       independent_sampler=optuna.samplers.RandomSampler(seed=seed)),
    }
    return PerTrialSeed(samplers[spec.sampler], spec.seed)


def pruner_of(spec: StudySpec) -> optuna.pruners.BasePruner:
    return {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1),
            "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(),
            "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(spec.epochs, 1)),
            "none": lambda: optuna.pruners.NopPruner()}[spec.pruner]()
