"""The one table from criterion names (CLI/API strings) to score objects."""

from __future__ import annotations

from typing import Callable

from .scores import FlipOutScore, MagnitudeScore, Score

CRITERIA: dict[str, Callable[..., Score]] = {
    "flipout": lambda p=2.0, **_: FlipOutScore(p),
    "magnitude": lambda **_: MagnitudeScore(),
}


def make_score(name: str, flipout_p: float = 2.0) -> Score:
    return CRITERIA[name](p=flipout_p)
