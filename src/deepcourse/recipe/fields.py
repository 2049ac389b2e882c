"""The building blocks of the recipe's tables: value types with ranges, a field's default with its description, and
the two kinds of table (strict, and open to a builder's keys)."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]


def doc(default: Any, description: str) -> Any:
    """A field's default and the sentence the recipe reference shows for it."""
    return Field(default, description=description)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Open(BaseModel):
    """A table whose extra keys belong to a registered builder, checked against its signature."""
    model_config = ConfigDict(extra="allow", strict=True)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})
