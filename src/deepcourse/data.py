"""Data plumbing every task shares: finding a local copy or the Hub, choosing and carving splits, batched tensors.

Local copies win over the Hub: `data.data_dir`, else `$DEEPCOURSE_DATA/<dataset>/`, then the Hub id. A folder the
recipe names is the copy to use: one that lacks the files is an error naming it, never a fall-back to another copy.
With none available the error lists every place that was tried, so offline machines get an answer instead of a
timeout.
The recipe's split keys mean the same for every task because they are implemented here, once: `data.val_split`
carves validation from train only when the dataset has none (`resolve_splits`), and `data.train_samples` /
`data.eval_samples` draw the same random subset for the same seed (`random_subset`), and `data.holdout` keeps the
tail of train out as split 'holdout' (`holdout_indices`).
"""
from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Mapping, Sequence, Sized
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.utils.data import Dataset

from deepcourse.errors import DataError, MissingSplitError, RecipeError, RecipeWarning
from deepcourse.recipe.schema import HOLDOUT

DATA_ENV = "DEEPCOURSE_DATA"
S = TypeVar("S", bound=Sized)  # a split: len() is its sample count


def require_data_dir(data_dir: str | os.PathLike, key: str = "data.data_dir", hint: str = "") -> Path:
    """An explicit data folder is a promise: one that is not there is an error naming the key and the path, never a
    silent fall-back to $DEEPCOURSE_DATA or the Hub (which would train on other data than the recipe says)."""
    folder = Path(data_dir).expanduser()
    if folder.is_dir():
        return folder
    where = "" if folder.is_absolute() else f" (looked for {folder.absolute()})"
    problem = "is a file, not a folder" if folder.exists() else "does not exist"
    raise DataError(f"{key}: folder '{data_dir}' {problem}{where}. " + (hint or f"Fix the path, or remove {key} "
                    f"to use ${DATA_ENV}/<dataset>/ or the Hugging Face Hub"))


def candidate_dirs(dataset: str, data_dir: str | os.PathLike | None) -> list[Path]:
    """Where a local copy of `dataset` may live: an explicit `data_dir` alone (it must exist, and a copy is never
    looked for elsewhere when it holds none), else $DEEPCOURSE_DATA/<dataset>/."""
    if data_dir:
        return [require_data_dir(data_dir)]
    root = os.environ.get(DATA_ENV)
    return [Path(root).expanduser() / dataset] if root else []


def find_split_files(folder: Path, patterns: Sequence[str]) -> list[Path]:
    found: list[Path] = []
    for pattern in patterns:
        found += sorted(Path(p) for p in glob.glob(str(folder / pattern)))
    return found


def present_splits(dataset: str, data_dir: str | os.PathLike | None,
                   patterns: Mapping[str, Sequence[str]]) -> tuple[Path | None, list[str]]:
    """The local copy of `dataset` (the first folder tried that holds files of any of its splits) and the splits
    it holds; (None, []) when there is none."""
    for folder in candidate_dirs(dataset, data_dir):
        if folder.is_dir():
            present = [s for s in patterns if find_split_files(folder, patterns[s])]
            if present:
                return folder, present
    return None, []


def locate_splits(
    dataset: str,
    data_dir: str | os.PathLike | None,
    patterns: Mapping[str, Sequence[str]],
    splits: Sequence[str],
) -> tuple[dict[str, list[Path]], list[str]]:
    """Files of each wanted split in the local copy: the first folder holding files of any of the dataset's splits
    (a wanted split missing there is missing, not looked for elsewhere). Returns (found, places tried). A split
    name `patterns` does not know is a MissingSplitError listing the ones it does."""
    unknown = [s for s in splits if s not in patterns]
    folder, present = present_splits(dataset, data_dir, patterns)
    if unknown:
        has = present or list(patterns)
        raise MissingSplitError(f"{dataset} has no split '{unknown[0]}' (it has: {', '.join(has)}).",
                                split=unknown[0], has=has)
    tried = [str(f) for f in candidate_dirs(dataset, data_dir)]
    if folder is None:
        return {}, tried
    tried = tried[:tried.index(str(folder)) + 1]
    return {s: find_split_files(folder, patterns[s]) for s in splits if s in present}, tried


def hub_allowed() -> bool:
    offline = {"1", "true", "yes", "on"}
    return not any(os.environ.get(v, "").lower() in offline for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                                                       "DEEPCOURSE_OFFLINE"))


def load_hf_splits(
    dataset: str,
    *,
    data_dir: str | os.PathLike | None,
    patterns: Mapping[str, Sequence[str]],
    splits: Sequence[str],
    hub_id: str | None = None,
    revision: str | None = None,
    local_format: str = "parquet",
    hub_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Load `splits` of a dataset as HF `datasets.Dataset`s (cached as Arrow), from a local copy or the Hub.

    Only the splits that exist are returned: the caller decides whether a missing one is carved from train. A
    local copy is the copy: a split it lacks is not fetched from the Hub. A Hub load is pinned to `revision` (a
    commit or a tag), which is required: a dataset repository can change under a recipe, and datasets >= 4 loads
    data files only, never a repository's script.
    """
    import datasets

    found, tried = locate_splits(dataset, data_dir, patterns, splits)
    if not found and present_splits(dataset, data_dir, patterns)[1]:
        return {}
    if found:
        files = {s: [str(p) for p in f] for s, f in found.items()}
        try:
            loaded = datasets.load_dataset(local_format, data_files=files)
        except Exception as exc:  # noqa: BLE001 - any reader failure: a user-facing data error naming the files
            folder = Path(next(iter(files.values()))[0]).parent
            raise DataError(f"cannot read the local copy of '{dataset}' in {folder}: {type(exc).__name__}: {exc}"
                            ) from None
        return {s: loaded[s] for s in loaded}
    if hub_id and not revision:
        raise RecipeError(f"data.hub_revision: required to load '{hub_id}' from the Hugging Face Hub; pin the "
                          f"commit (or tag) to load, so the data cannot change under the recipe")
    wanted = ", ".join(f"{s}: {' or '.join(patterns.get(s, ()))}" for s in splits if patterns.get(s))
    if data_dir:  # the folder the recipe (or --data-dir) names is the copy: no fall-back to the Hub
        raise DataError(f"data.data_dir: folder '{data_dir}' holds no files of dataset '{dataset}' ({wanted}); put "
                        f"them there, or remove data.data_dir to use ${DATA_ENV}/{dataset}/ or the Hugging Face Hub")
    if hub_id and hub_allowed():
        try:
            loaded = datasets.load_dataset(hub_id, revision=revision, **dict(hub_kwargs or {}))
        except Exception as exc:  # noqa: BLE001 - network, auth or format: each is one line of `tried`
            first = (str(exc).splitlines() or [""])[0][:200]
            tried.append(f"the Hugging Face Hub ({hub_id} at {revision}): {type(exc).__name__}: {first}")
        else:
            return {s: loaded[s] for s in loaded if s in splits}
    elif hub_id:
        tried.append(f"the Hugging Face Hub ({hub_id}): skipped, offline mode is set")
    env_hint = "" if os.environ.get(DATA_ENV) else f" ${DATA_ENV} is not set."
    raise DataError(
        f"no copy of dataset '{dataset}' found. Tried: " + ("; ".join(tried) if tried else "nothing") +
        f". Put the files ({wanted}) in a folder and set data.data_dir to it, or set ${DATA_ENV} to a folder "
        f"holding {dataset}/.{env_hint}")


def split_indices(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reproducible (train, validation) index split: the same seed always carves the same validation set."""
    n_val = max(1, int(round(n * fraction)))
    if n_val >= n:
        raise DataError(f"data.val_split={fraction} leaves no training samples out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def holdout_indices(n: int, fraction: float, groups: Sequence[Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, holdout) indices, the same for every seed and every candidate recipe, so all are scored on the same
    unseen samples. With `groups` (a document id per sample, in corpus order): the last `fraction` of the samples,
    the cut moved back to where a document starts, so no document is split between training and holdout (the
    sentences of one news story share its entities). Without: a random draw with a fixed seed (0), since a
    corpus's tail can be one class (image folders are sorted by class). A fraction that rounds to no sample is
    refused; a holdout of one document (or cut inside the only one) is said in a warning: its score says little."""
    size = int(round(n * fraction))
    if size == 0:
        raise DataError(f"data.holdout={fraction} of {n} training samples rounds to none ({n * fraction:.2g}); hold "
                        f"out at least one (data.holdout >= {1 / n:.2g}), or remove data.holdout")
    if size >= n:
        raise DataError(f"data.holdout={fraction} leaves no training samples out of {n}")
    if groups is None:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        return perm[size:].sort().values, perm[:size].sort().values
    cut = start = n - size
    while start > 0 and groups[start - 1] == groups[start]:
        start -= 1
    if start == 0:  # the first document reaches past the cut: cut inside it rather than hold out everything
        warnings.warn(f"data.holdout={fraction}: train's first document runs past the cut (sample {cut} of {n}), so "
                      f"the holdout is cut inside it and shares that document with training: its score is optimistic. "
                      f"A corpus of several documents keeps whole ones out", RecipeWarning, stacklevel=3)
    elif len(set(groups[start:])) == 1:
        warnings.warn(f"data.holdout={fraction} holds out a single document ({n - start} of {n} samples, "
                      f"{(n - start) / n:.0%}): a score on one document says little about unseen data; raise "
                      f"data.holdout to keep several out", RecipeWarning, stacklevel=3)
    cut = start if start > 0 else cut
    return torch.arange(cut), torch.arange(cut, n)


def splits_to_read(wanted: Sequence[str], *, val_split: float | None, holdout: float | None) -> list[str]:
    """The splits a task must read from its source for `wanted`: train too when validation may be carved from it
    (`data.val_split`) or when it holds the holdout (`data.holdout`: train is always cut the same way), and not the
    holdout itself, which is carved, not read."""
    carved = ("validation" in wanted and val_split) or (holdout and (HOLDOUT in wanted or "train" in wanted))
    read = [s for s in wanted if not (holdout and s == HOLDOUT)]
    return list(dict.fromkeys([*read, *(("train",) if carved else ())]))


def subset(split: Any, indices: torch.Tensor) -> Any:
    """The samples `indices` of a split, of the same kind where it can be: the split's own `subset(indices)`
    (ArrayDataset, a task's split type), a Hugging Face dataset's `select`, else a torch `Subset`."""
    if hasattr(split, "subset"):
        return split.subset(indices)
    if hasattr(split, "select") and hasattr(split, "column_names"):
        return split.select(indices.tolist())
    from torch.utils.data import Subset

    return Subset(split, indices.tolist())  # forwards __getitems__ when the dataset has it


def resolve_splits(available: Mapping[str, S], wanted: Sequence[str], *, dataset: str, val_split: float | None,
                   seed: int, source: str = "", has: Sequence[str] | None = None,
                   holdout: float | None = None) -> dict[str, S]:
    """The `wanted` splits out of those a dataset has (read `splits_to_read(wanted, ...)` of them), with the one
    meaning of `data.holdout` and `data.val_split`: first the tail of train is kept out as split 'holdout' (whole
    groups, when the split has a `groups()` method giving a document id per sample); then, when the dataset has no
    validation split, a fraction of the rest is carved off as one (the same samples for the same seed, and train
    keeps the rest); a dataset's own validation split is used as it is. A split that is still missing is a
    MissingSplitError naming it and the splits there are (`has`: all the splits the source holds, when the task
    loaded only some of them), with the key that would help.

    Tasks call this on their raw splits, before they fit anything (vocabularies, statistics) on train, so nothing
    is fitted on the holdout either."""
    splits = dict(available)
    if holdout and "train" in splits:
        train = splits["train"]
        groups = train.groups() if hasattr(train, "groups") else None
        keep, held = holdout_indices(len(train), float(holdout), groups)
        splits["train"], splits[HOLDOUT] = subset(train, keep), subset(train, held)
    if "validation" in wanted and val_split:
        if "validation" in splits:
            warnings.warn(f"data.val_split = {val_split} is not used: dataset '{dataset}' has its own validation split",
                          RecipeWarning, stacklevel=2)
        elif "train" in splits:
            left = len(splits["train"])
            if holdout and HOLDOUT in splits and max(1, round(left * float(val_split))) >= left:
                raise DataError(f"data.holdout={holdout} and data.val_split={val_split} leave no training samples: "
                                f"the holdout keeps {len(splits[HOLDOUT])} out, and validation would take all {left} "
                                f"that remain; lower one of them")
            keep, held = split_indices(left, float(val_split), seed)
            train = splits["train"]
            splits["train"], splits["validation"] = subset(train, keep), subset(train, held)
    where = f"{source}: " if source else ""
    there = list(dict.fromkeys([*(has or ()), *splits]))
    for split in wanted:
        if split not in splits:
            hint = (" Set data.val_split (e.g. 0.1) to carve a validation split from train." if split == "validation"
                    and "train" in there else " Set data.holdout (e.g. 0.1) to keep the end of train out as the "
                    "holdout split." if split == HOLDOUT else "")
            raise MissingSplitError(f"{where}{dataset} has no split '{split}' here (it has: "
                                    f"{', '.join(there) or 'none'}).{hint}", split=split, has=there)
    return {s: splits[s] for s in wanted}


class ArrayDataset(Dataset):
    """Samples stored as aligned tensors; `__getitems__` returns a whole batch with one indexing op.

    PyTorch's DataLoader calls `__getitems__` with the batch's indices when it exists, so a batch of 128
    CIFAR images costs one `index_select` instead of 128 `__getitem__` calls and a collate.
    """

    def __init__(self, **arrays: torch.Tensor) -> None:
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"ArrayDataset: arrays differ in length: {lengths}")
        self.arrays = arrays

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self.arrays.items()}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.device)
        return {k: v.index_select(0, idx) for k, v in self.arrays.items()}

    @property
    def device(self) -> torch.device:
        return next(iter(self.arrays.values())).device if self.arrays else torch.device("cpu")

    def subset(self, indices: torch.Tensor) -> ArrayDataset:
        idx = indices.to(self.device)
        return ArrayDataset(**{k: v.index_select(0, idx) for k, v in self.arrays.items()})

    def to(self, device: torch.device | str) -> ArrayDataset:
        """The same samples held on `device` (data.on_device): batches are then cut out there."""
        return ArrayDataset(**{k: v.to(device) for k, v in self.arrays.items()})


def random_subset(dataset: Any, size: int | None, seed: int) -> Any:
    """At most `size` samples of `dataset`, drawn reproducibly from the seed (an ArrayDataset stays one)."""
    if size is None or size >= len(dataset):
        return dataset
    keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + 17))[:size].sort().values
    return subset(dataset, keep)


def sized_subset(dataset: Any, size: int | None, seed: int, *, key: str, what: str) -> Any:
    """`random_subset` for a recipe key that asks for `size` samples: asking for more than there are is said (the
    run would silently use fewer), naming the key and the count. `what`: 'training samples of dataset 'x''."""
    if size is not None and size > len(dataset):
        raise RecipeError(f"{key}: {size} is more than the {len(dataset)} {what}; lower it, or remove the key to use "
                          f"all of them")
    return random_subset(dataset, size, seed)


def passthrough_collate(batch: Any) -> Any:
    """Collate for datasets whose `__getitems__` already returns a batch."""
    return batch


def sample_lengths(dataset: Any) -> torch.Tensor | None:
    """Per-sample lengths of a variable-length dataset (its `lengths` attribute), through a `Subset` too."""
    from torch.utils.data import Subset

    if isinstance(dataset, Subset):
        inner = sample_lengths(dataset.dataset)
        return None if inner is None else inner[torch.as_tensor(dataset.indices, dtype=torch.long)]
    lengths = getattr(dataset, "lengths", None)
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths)
    return lengths if lengths.ndim == 1 and len(lengths) == len(dataset) else None
