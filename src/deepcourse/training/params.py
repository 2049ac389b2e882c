"""Parameters by name pattern: the optimizer's parameter groups (`optimizer.groups`) and frozen parameters
(`train.freeze`).

One matching rule serves both, so a pattern means the same everywhere: an fnmatch glob on the names
`model.named_parameters()` gives, where a pattern also matches everything beneath it ("layer1" is "layer1.*"). The
groups are torch's parameter-group dicts handed to the registered optimizer builder, so every optimizer, the lab's
`lab:NAME` included, takes them, and every schedule scales each group's rate from its own starting value (one-cycle
peaks each group at its own rate): the ratios declared hold for the whole run. A frozen parameter has
`requires_grad = False`: it gets no gradient, so no optimizer touches it (no decay, no momentum) and it stays
bit-identical. Freezing for part of a run flips that flag at epoch boundaries, from the epoch the loop is at, so a
resumed run freezes exactly what the uninterrupted one did.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from torch import nn

from deepcourse.errors import RecipeError
from deepcourse.recipe.builders import parameters
from deepcourse.recipe.schema import Recipe
from deepcourse.recipe.techniques import FreezeRule, ParamGroup
from deepcourse.training.callbacks import Callback, TrainContext

logger = logging.getLogger(__name__)


def matches(name: str, pattern: str) -> bool:
    """`pattern` names parameter `name`: a glob on the whole name, or on a module above it."""
    return fnmatchcase(name, pattern) or fnmatchcase(name, pattern + ".*")


def matching(model: nn.Module, pattern: str, key: str) -> list[str]:
    """The names `pattern` matches; none is a recipe error naming `key` with a few names that could be matched."""
    names = [n for n, _ in model.named_parameters()]
    found = [n for n in names if matches(n, pattern)]
    if not found:
        modules = list(dict.fromkeys(n.rsplit(".", 1)[0] for n in names if "." in n))
        raise RecipeError(f"{key}: '{pattern}' matches no parameter of the model. Its parameters are named like "
                          f"{', '.join(names[:4])}{', ...' if len(names) > 4 else ''} (modules "
                          f"{', '.join(modules[:4])}{', ...' if len(modules) > 4 else ''}): a glob such as '*.bias' "
                          f"or a module path such as '{modules[0] if modules else 'layer1'}'")
    return found


# -- parameter groups ---------------------------------------------------------------------------------------------
def param_groups(recipe: Recipe, model: nn.Module, builder: Callable[..., Any]) -> list[Any]:
    """What the optimizer builder gets as `params`: the trainable parameters, or (with optimizer.groups) torch's
    group dicts, the default group first (its rate is the one logs and reports show)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    declared = recipe.optimizer.groups or []
    if not declared:
        return trainable
    base = _base_values(recipe, builder)
    taken: set[str] = set()
    members: list[list[str]] = []
    for i, group in enumerate(declared):
        found = matching(model, group.match, f"optimizer.groups[{i}].match")
        members.append([n for n in found if n not in taken])
        taken.update(found)
    named = dict(model.named_parameters())
    default = [p for n, p in named.items() if n not in taken and p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": default}] if default else []
    for i, (group, names) in enumerate(zip(declared, members, strict=True)):
        params = [named[n] for n in names if named[n].requires_grad]
        if params:  # a group of frozen parameters alone trains nothing: left out
            groups.append({"params": params, **_hyper(group, base, recipe.optimizer.name, i)})
    if not groups:
        raise RecipeError("train.freeze: every parameter is frozen; nothing would train")
    return groups


def _base_values(recipe: Recipe, builder: Callable[..., Any]) -> dict[str, float | None]:
    """The optimizer's lr and weight_decay as the recipe (or else the builder's default) sets them; None where the
    builder has no such key."""
    known = parameters(builder)
    options = recipe.optimizer.options
    return {key: float(options.get(key, known[key][1])) if key in known else None for key in ("lr", "weight_decay")}


def _hyper(group: ParamGroup, base: dict[str, float | None], optimizer: str, i: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, absolute, scale in (("lr", group.lr, group.lr_scale),
                                 ("weight_decay", group.weight_decay, group.weight_decay_scale)):
        if base[key] is None:
            if absolute is not None or scale != 1:
                raise RecipeError(f"optimizer.groups[{i}]: optimizer '{optimizer}' has no {key} to set per group; "
                                  f"remove {key} / {key}_scale from the group")
            continue
        out[key] = absolute if absolute is not None else base[key] * scale  # type: ignore[operator]
    return out


# -- freezing -----------------------------------------------------------------------------------------------------
@dataclass
class Scheduled:
    """Parameters frozen for part of the run: from epoch `start` (0-based) to `stop` (None: to the end)."""

    params: list[nn.Parameter]
    start: int
    stop: int | None

    def frozen_at(self, epoch: int) -> bool:
        return epoch >= self.start and (self.stop is None or epoch < self.stop)


def freeze(recipe: Recipe, model: nn.Module, *, num_processes: int = 1, main: bool = True) -> list[Scheduled]:
    """Apply train.freeze: plain patterns now (left out of the optimizer), the rules by epoch returned for
    `FreezeSchedule`. Logs what was frozen; freezing every parameter (at any epoch) is a recipe error."""
    rules: Sequence[FreezeRule] = recipe.train.freeze or []
    if not rules:
        return []
    named = dict(model.named_parameters())
    always: set[str] = set()
    scheduled: list[tuple[set[str], Scheduled]] = []
    for i, rule in enumerate(rules):
        found = set(matching(model, rule.match, f"train.freeze[{i}]"))
        if rule.whole_run:
            always |= found
        else:
            start, stop = (rule.from_epoch, None) if rule.from_epoch is not None else (0, rule.until_epoch)
            scheduled.append((found, Scheduled([], start or 0, stop)))
    for names, item in scheduled:
        item.params = [named[n] for n in sorted(names - always)]
    _check_not_all(recipe, named, always, scheduled)
    if scheduled and num_processes > 1:
        raise RecipeError("train.freeze: freezing from or until an epoch needs one process (a distributed model "
                          "keeps the set of trained parameters it started with); freeze for the whole run instead")
    for n in always:
        named[n].requires_grad_(False)
    if main:
        _report(named, always, scheduled)
    return [item for _, item in scheduled if item.params]


def _check_not_all(recipe: Recipe, named: dict[str, nn.Parameter], always: set[str],
                   scheduled: list[tuple[set[str], Scheduled]]) -> None:
    for epoch in range(recipe.train.epochs):
        frozen = always.union(*(names for names, item in scheduled if item.frozen_at(epoch)))
        if len(frozen) == len(named):
            when = "" if frozen == always else f" in epoch {epoch + 1}"
            raise RecipeError(f"train.freeze: freezes every parameter of the model{when}; nothing would train. "
                              f"Freeze modules by name (e.g. the body) and leave the head to train")


def _report(named: dict[str, nn.Parameter], always: set[str], scheduled: list[tuple[set[str], Scheduled]]) -> None:
    def count(names: Iterable[str]) -> str:
        names = list(names)
        return f"{len(names)} tensors ({sum(named[n].numel() for n in names):,} parameters)"

    parts = [f"{count(always)} frozen for the whole run"] if always else []
    for names, item in scheduled:
        span = f"from epoch {item.start + 1}" if item.stop is None else f"until epoch {item.stop}"
        parts.append(f"{count(names - always)} frozen {span}")
    logger.info(f"train.freeze: {'; '.join(parts)}")


class FreezeSchedule(Callback):
    """Sets `requires_grad` of the scheduled parameters for the epoch about to train: at the start (a resumed run
    included) and after each epoch. A parameter without a gradient is skipped by every optimizer."""

    def __init__(self, scheduled: list[Scheduled]) -> None:
        self.scheduled = scheduled

    def apply(self, epoch: int) -> None:
        for item in self.scheduled:
            frozen = item.frozen_at(epoch)
            for p in item.params:
                p.requires_grad_(not frozen)
                if frozen:
                    p.grad = None

    def on_train_start(self, ctx: TrainContext) -> None:
        self.apply(ctx.state.epoch)

    def on_epoch_end(self, ctx: TrainContext) -> None:
        self.apply(ctx.state.epoch + 1)
