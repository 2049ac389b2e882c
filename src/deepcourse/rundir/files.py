"""Files a run writes and reads: atomic text and folders, JSON, safetensors, and loading that never runs code.

A file is written under a temporary name and renamed into place (a folder likewise), so a crash mid-write never
leaves something that looks complete. Weights and tensors are safetensors, and every other piece of state
(optimizer, schedule, gradient scaler) is JSON beside a safetensors file for its tensors (`save_state`), so no file
deepcourse writes is ever unpickled. Older runs' `.pt` files are read with `weights_only=True` (`safe_torch_load`).
"""
from __future__ import annotations

import contextlib
import json
import os
import pickletools
import random
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from deepcourse.errors import CheckpointError, DamagedFileError
from deepcourse.rundir.outputs import nearest_existing


# -- text and folders -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_write(path: Path, *, folder: bool = False, merge: bool = False) -> Iterator[Path]:
    """A temporary path to write `path` through, renamed into place when the block ends without an error, so a crash
    or an error mid-write never leaves something that looks complete, and an error leaves `path` as it was. A block
    that leaves nothing at the temporary path writes nothing (e.g. nothing to write).

    A file is written as `.NAME.tmp-PID` beside `path` (several processes may write the same file); a folder
    (`folder`) as `.tmp-NAME` beside it (one writer: a crash's leftover is cleared first, and the checkpoints'
    pruning sweeps `.tmp-*`), replacing an older folder whole. `merge`: the block's files are moved INTO the folder
    `path` (created with its parents), replacing files of the same names and leaving every other file there alone;
    the temporary folder then sits in the nearest folder of `path` that exists, so a failure creates no parents."""
    if merge:
        tmp = Path(tempfile.mkdtemp(prefix=f".deepcourse-{path.name or 'out'}-", dir=nearest_existing(path)))
    elif folder:
        tmp = fresh_dir(path.with_name(f".tmp-{path.name}"))
    else:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if tmp.exists():
            _sync_files(tmp)
            if merge:
                path.mkdir(parents=True, exist_ok=True)
                for item in sorted(tmp.iterdir()):
                    os.replace(item, path / item.name)
            elif folder:
                commit_dir(tmp, path)
            else:
                os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _sync_files(path: Path) -> None:
    """Flush a written file (or a folder's files) to the disk before it is renamed into place."""
    for f in [path] if path.is_file() else [f for f in path.iterdir() if f.is_file()]:
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - not every platform can open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def commit_dir(tmp: Path, final: Path) -> None:
    """Rename a fully written temporary folder into place, replacing an older one of the same name (the last step
    of `atomic_write(folder=True)`, kept apart so fault-injection tests can stop a run right before it)."""
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def fresh_dir(path: Path) -> Path:
    """An empty folder at `path` (a leftover of a crashed write is removed first)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# -- JSON: the one reader and writer of the project's files -----------------------------------------------------
def to_json(obj: Any, *, indent: int | None = 1) -> str:
    """JSON text of run state; tensors and arrays become lists, anything else unknown its `str`."""
    return json.dumps(obj, indent=indent, default=_jsonable)


def _jsonable(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, to_json(obj))


def read_json(path: Path, *, missing: Any = ...) -> Any:
    """The JSON in `path`, or a CheckpointError naming the file. `missing`, when given, stands in for a file that
    does not exist (optional files such as summary.json of an unfinished run); a damaged file is always an error."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if missing is not ...:
            return missing
        raise DamagedFileError(f"{path}: file missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DamagedFileError(f"{path}: not valid JSON ({exc})") from None


# -- tensors ----------------------------------------------------------------------------------------------------
def save_weights(model: torch.nn.Module, path: Path) -> None:
    save_model(model, str(path))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    if not path.exists():
        raise DamagedFileError(f"{path}: weights file missing")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except (SafetensorError, OSError) as exc:
        raise DamagedFileError(f"{path}: cannot load weights: {exc}") from None
    except RuntimeError as exc:  # whole, but of another shape: not a damaged file
        raise CheckpointError(f"{path}: cannot load weights: {exc}") from None
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the model built from the recipe "
                              f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")


def save_tensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise DamagedFileError(f"{path}: file missing") from None
    except (SafetensorError, OSError) as exc:
        raise DamagedFileError(f"{path}: cannot read tensors: {exc}") from None


# -- state dicts (optimizer, schedule, scaler) as JSON + safetensors ---------------------------------------------------
def save_state(state: Any, stem: Path) -> None:
    """Write a state dict as `stem.json` (its structure and plain values) and `stem.safetensors` (its tensors)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(state, "", tensors)
    save_tensors(tensors, stem.with_name(stem.name + ".safetensors"))
    write_json(stem.with_name(stem.name + ".json"), skeleton)


def load_state(stem: Path) -> Any:
    """The state dict `save_state` wrote (tensors on the CPU)."""
    tensors = load_tensors(stem.with_name(stem.name + ".safetensors"))
    return _join(read_json(stem.with_name(stem.name + ".json")), tensors)


def has_state(stem: Path) -> bool:
    return stem.with_name(stem.name + ".json").exists()


def _split(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        name = key or "value"
        tensors[name] = value
        return {"__tensor__": name}
    if isinstance(value, dict):  # keys keep their type: optimizer states are keyed by parameter index
        return {"__dict__": [[k, _split(v, f"{key}.{k}" if key else str(k), tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_split(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_split(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"state entry {key or '(top)'} is a {type(value).__name__}, which has no safe file form")


def _join(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_join(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__tuple__" in value:
            return tuple(_join(v, tensors) for v in value["__tuple__"])
        if "__dict__" in value:
            return {k: _join(v, tensors) for k, v in value["__dict__"]}
    return value


def safe_torch_load(path: Path) -> Any:
    """torch.load restricted to tensors and plain containers: a planted pickle is refused, never run. A file torch
    cannot read at all (cut short, overwritten) is called damaged, not dangerous: only one that names code is."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DamagedFileError(f"{path}: file missing") from None
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, zip and EOF errors: say which it is
        text = str(exc)
        first = _reason(text) or type(exc).__name__
        if "GLOBAL" in text or _bare_pickle_naming_code(path):  # torch's own refusal, or a pickle it cannot parse
            raise CheckpointError(f"{path}: refused to load: it holds objects other than tensors and plain values, "
                                  f"which could run code ({first})") from None
        raise DamagedFileError(f"{path}: damaged or not a checkpoint file (torch cannot read it: {first[:200]})"
                               ) from None


#: the lines of torch's weights-only refusal that are advice, not the reason
_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation", "WeightsUnpickler error",
           "In PyTorch 2.6", "Re-running `torch.load`")


def _reason(text: str) -> str:
    """The first line of a torch.load error that says what is wrong, up to its first sentence's end."""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(_ADVICE):
            return line.split(". ")[0].rstrip(".")
    return ""


def _bare_pickle_naming_code(path: Path) -> bool:
    """Whether `path` is a bare pickle (torch writes zip files) that refers to a global, i.e. to code: torch's
    loader stops at its first unsupported opcode before it sees the global. Read with pickletools, which parses
    opcodes without executing them; a file that does not parse names nothing and is merely damaged."""
    try:
        if zipfile.is_zipfile(path):
            return False  # torch read the pickle inside and said GLOBAL if it met one
        return any(op.name in ("GLOBAL", "STACK_GLOBAL", "INST") for op, _, _ in pickletools.genops(path.read_bytes()))
    except Exception:  # noqa: BLE001 - not a parsable pickle: damaged, not dangerous
        return False


# -- random number generators -----------------------------------------------------------------------------------
def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every RNG a training step may draw from: tensors for safetensors, the rest JSON."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # this process's own GPU only: each process keeps its own file, and a requeue on a node with fewer (or other)
        # GPUs must still find its state
        tensors["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    np_state: Any = np.random.get_state()  # the legacy tuple (name, keys, pos, has_gauss, gauss)
    tensors["numpy"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64).copy())
    py = random.getstate()
    meta = {"python": [py[0], list(py[1]), py[2]], "numpy": [np_state[0], int(np_state[2]), int(np_state[3]),
                                                              float(np_state[4])]}
    return tensors, meta


def set_rng_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available() and any(k.startswith("cuda") for k in tensors):
        device = torch.cuda.current_device()
        # "cuda": this process's GPU; older checkpoints kept every visible GPU as cuda0, cuda1, ...: take ours
        own = tensors.get("cuda", tensors.get(f"cuda{device}"))
        if own is not None:
            torch.cuda.set_rng_state(own, device)
    name, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((name, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))
