"""What `deepcourse explain` hands a task and what the task hands back: the command line's options and one
explanation (title, figures, Markdown notes, numbers). Kept apart from `deepcourse.explain`, which loads runs, so
that `deepcourse.task` can name these types without importing the run machinery (and closing an import circle).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .figures import Figure


@dataclass(frozen=True)
class ExplainOptions:
    """The command line's choices; None means the task's default, and a task refuses (UserError) an option that does
    not apply to it, naming it (`--layer` for a tagger, `--nbest` for a CNN).

    target: also explain this answer besides the predicted one (a class of a CNN; an entity type or the words of an
    entity of a tagger). topk: probabilities shown. nbest: best tag paths listed. layer: the module whose maps
    Grad-CAM weighs. channels: feature-map channels shown per stage. steps: integrated-gradient steps."""

    target: str | None = None
    topk: int | None = None
    nbest: int | None = None
    layer: str | None = None
    channels: int | None = None
    steps: int = 32


@dataclass
class Explanation:
    """What a task shows for one input, or for the model as a whole (its first convolution's filters, a CRF's
    transitions): a section title, saved figures, extra Markdown lines (tables), and JSON-serialisable numbers for
    `--json` (include "input" for an input's)."""

    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)
