"""Ensembles as a model: `[model] name = "ensemble"` lists the members' own [model] tables, and the run's task
combines the members it builds from them (`Task.ensemble`: averaged probabilities for a classifier, an averaged CRF
for a tagger). `deepcourse ensemble RUN RUN ... -o DIR` writes such a recipe with the members' weights, so the
ensemble is a run directory that evaluate, predict and report read like any other.
"""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field
from torch import nn

from deepcourse.errors import RecipeError
from deepcourse.recipe.schema import ModelSection
from deepcourse.registry import MODELS

ENSEMBLE = "ensemble"


@MODELS.register(ENSEMBLE)
def ensemble(members: Annotated[list[dict[str, Any]], Field(min_length=2)]) -> nn.Module:
    """Several trained runs as one model (made by `deepcourse ensemble`): members are their [model] tables."""
    raise RecipeError("model.name: 'ensemble' is built from its members' weights by `deepcourse ensemble RUN RUN "
                      "... -o DIR`, not trained; train each member with its own recipe")


def member_sections(model: ModelSection) -> list[ModelSection]:
    """The members' [model] tables of an ensemble's [model] table, in order."""
    return [ModelSection.model_validate(member) for member in model.options["members"]]
