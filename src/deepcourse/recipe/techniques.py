"""The tables of the training techniques a recipe can switch on: parameter groups (`[[optimizer.groups]]`), freezing
(`train.freeze`) and weight averaging (`[train.average]`). Their keys are documented with the rest of the recipe
(`deepcourse.recipe.schema`)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from deepcourse.recipe.fields import NonNegFloat, PositiveFloat, PositiveInt, Strict, doc

#: what `optimizer.groups[i].match`, `train.freeze` match against: parameter names as model.named_parameters() gives
MATCH_HELP = ("a pattern on parameter names (model.named_parameters()): an fnmatch glob (\"*.bias\", "
              "\"layer[34]\") or a module path (\"layer1\" matches everything under it)")


class ParamGroup(Strict):
    match: str = doc(..., MATCH_HELP)
    lr_scale: PositiveFloat = doc(1.0, "this group's learning rate is optimizer.lr times this (schedules keep the "
                                       "ratio)")
    weight_decay_scale: NonNegFloat = doc(1.0, "this group's weight decay is optimizer.weight_decay times this (0: no "
                                               "decay, e.g. on norms and biases)")
    lr: PositiveFloat | None = doc(None, "this group's learning rate, instead of lr_scale")
    weight_decay: NonNegFloat | None = doc(None, "this group's weight decay, instead of weight_decay_scale")

    @model_validator(mode="after")
    def _one_of(self) -> ParamGroup:
        for absolute, scale in (("lr", "lr_scale"), ("weight_decay", "weight_decay_scale")):
            if getattr(self, absolute) is not None and scale in self.model_fields_set:
                raise ValueError(f"set {absolute} or {scale}, not both")
        return self


class WeightAveraging(Strict):
    method: Literal["ema", "lookahead", "swa"] = doc(
        ..., "ema: an exponential moving average of the weights kept beside the model; lookahead: the same average, "
             "copied back into the model at each update (airbench's); swa: the equal average of the weights at every "
             "update from `start` on. Buffers (batch-norm statistics) are averaged with the weights. Evaluation and "
             "best/ use the average; the model holds it when training ends")
    decay: Annotated[float, Field(gt=0, lt=1)] = doc(
        0.999, "ema: the share the average keeps at each update; lookahead: per optimizer step (an update keeps "
               "decay ** every). swa ignores it")
    every: PositiveInt = doc(1, "optimizer steps between updates of the average")
    ramp: NonNegFloat = doc(0.0, "ema and lookahead: the share kept is multiplied by (step / total steps) ** ramp, so "
                                 "early weights are soon forgotten (airbench: 3). swa ignores it")
    start: Annotated[float, Field(ge=0, lt=1)] = doc(
        0.0, "fraction of the run's optimizer steps before the average begins, as a copy of the weights then (0: the "
             "initial weights)")


class FreezeRule(Strict):
    match: str = doc(..., MATCH_HELP)
    from_epoch: PositiveInt | None = doc(None, "trained for the first N epochs, then frozen")
    until_epoch: PositiveInt | None = doc(None, "frozen for the first N epochs, then trained (gradual unfreezing)")

    @model_validator(mode="after")
    def _one_of(self) -> FreezeRule:
        if self.from_epoch is not None and self.until_epoch is not None:
            raise ValueError("give from_epoch or until_epoch, not both (neither: frozen for the whole run)")
        return self

    @property
    def whole_run(self) -> bool:
        return self.from_epoch is None and self.until_epoch is None
