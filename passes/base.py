"""The pass interface: one small class, one method, an honest `modified` flag.

Modelled on onnx-ir's passes: `call(model) -> PassResult(model, modified)`. Every pass here is functional:
it never mutates the ModelProto it is given, so a caller can always compare before and after.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Sequence

import onnx


class PassError(RuntimeError):
    """A pass failed; the message names the pass and the passes that ran before it."""


@dataclass(frozen=True)
class PassResult:
    model: onnx.ModelProto
    modified: bool


class Pass(abc.ABC):
    """A functional ModelProto -> ModelProto rewrite."""

    @property
    def name(self) -> str:
        return type(self).__name__

    @abc.abstractmethod
    def call(self, model: onnx.ModelProto) -> PassResult:
        """Return a new model (the input is left untouched) and whether anything changed."""

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        return self.call(model)


class Sequential(Pass):
    """Run passes in order; the result is modified if any of them modified it."""

    def __init__(self, passes: Sequence[Pass]):
        self.passes = list(passes)

    def call(self, model: onnx.ModelProto) -> PassResult:
        modified = False
        done: list[str] = []
        for p in self.passes:
            try:
                result = p(model)
            except PassError:
                raise
            except Exception as exc:  # name the failing pass and its predecessors
                ran = ", ".join(done) or "none"
                raise PassError(f"pass {p.name} failed (after: {ran}): {exc}") from exc
            model, modified = result.model, modified or result.modified
            done.append(p.name)
        return PassResult(model, modified)
