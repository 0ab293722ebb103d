"""The one table from criterion names (CLI/API strings) to typed Criterion objects: score + selection + schedule.

| name            | score                | selection                 | schedule                                  |
|-----------------|----------------------|---------------------------|-------------------------------------------|
| flipout         | |w|^p / (flips + 1)  | global                    | geometric (rate r, periodic)              |
| magnitude       | |w|                  | global                    | geometric                                 |
| layer-magnitude | |w|                  | same fraction per tensor  | geometric                                 |
| random          | uniform (seeded)     | global                    | geometric                                 |
| snip            | |g * w|              | global                    | one shot before fine-tuning, mask fixed   |
| gmp             | |w|                  | global                    | cubic (Zhu & Gupta)                       |
| nnrelief        | -a_ij (see nnrelief) | global, or a <= alpha     | geometric, or k periodic events (alpha)   |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .nnrelief import NNReliefScore
from .schedule import CubicSchedule, GeometricSchedule, OneShotSchedule, PeriodicSchedule, Schedule
from .scores import FlipOutScore, MagnitudeScore, RandomScore, Score, SnipScore
from .selection import GlobalSelection, LayerwiseSelection, Selection, ThresholdSelection

DEFAULT_ALPHA_EVENTS = 4  # NNrelief iterations when alpha is given and the number of events is not


@dataclass(frozen=True)
class CriterionOptions:
    """The knobs criteria read; each criterion ignores those it has no use for."""

    sparsity: float = 0.9
    prune_rate: float = 0.5
    flipout_p: float = 2.0
    alpha: float | None = None  # NNrelief: keep fraction per neuron instead of a target sparsity
    prune_events: int | None = None  # NNrelief with alpha: number of pruning events
    seed: int = 0


@dataclass(frozen=True)
class Criterion:
    score: Score
    selection: Selection
    schedule: Schedule


def _geometric(o: CriterionOptions) -> GeometricSchedule:
    return GeometricSchedule(o.sparsity, o.prune_rate)


def _nnrelief(o: CriterionOptions) -> Criterion:
    if o.alpha is None:  # a target: the bisection over alpha, in closed form, is the global selection
        return Criterion(NNReliefScore(), GlobalSelection(), _geometric(o))
    # the score is -a_ij and a connection is pruned iff a_ij >= alpha
    return Criterion(NNReliefScore(), ThresholdSelection(-o.alpha),
                     PeriodicSchedule(o.prune_events or DEFAULT_ALPHA_EVENTS))


CRITERIA: dict[str, Callable[[CriterionOptions], Criterion]] = {
    "flipout": lambda o: Criterion(FlipOutScore(o.flipout_p), GlobalSelection(), _geometric(o)),
    "magnitude": lambda o: Criterion(MagnitudeScore(), GlobalSelection(), _geometric(o)),
    "layer-magnitude": lambda o: Criterion(MagnitudeScore(), LayerwiseSelection(), _geometric(o)),
    "random": lambda o: Criterion(RandomScore(o.seed), GlobalSelection(), _geometric(o)),
    "snip": lambda o: Criterion(SnipScore(), GlobalSelection(), OneShotSchedule(o.sparsity)),
    "gmp": lambda o: Criterion(MagnitudeScore(), GlobalSelection(), CubicSchedule(o.sparsity)),
    "nnrelief": _nnrelief,
}

# criteria that accept --alpha
ALPHA_CRITERIA = ("nnrelief",)


def make_criterion(name: str, options: CriterionOptions | None = None) -> Criterion:
    return CRITERIA[name](options if options is not None else CriterionOptions())
