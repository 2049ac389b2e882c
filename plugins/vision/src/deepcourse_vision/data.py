"""Image datasets: CIFAR-10, MNIST, Fashion-MNIST, the bundled UCI digits, and image folders.

Every image is decoded once, into a uint8 tensor [N, C, H, W] saved in a cache file (safetensors) whose name is a
hash of where the images came from: the source files' paths, sizes and modification times (or the Hub dataset's
fingerprint) and the decoding options. A second run reads that file back and touches neither PIL nor the Parquet
files, so an epoch costs what the model costs. The cache lives in $DEEPCOURSE_CACHE/vision (default
~/.cache/deepcourse/vision) and may be deleted at any time.

Dataset builders return an `ImageData` with the splits they have; the task chooses and carves splits (through
`deepcourse.api.resolve_splits`), computes statistics and batches.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field

from deepcourse.api import DATASETS, DataError, Unique, candidate_dirs, load_hf_splits, locate_splits, present_splits

CACHE_ENV = "DEEPCOURSE_CACHE"
CACHE_VERSION = 1
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
BUNDLED = Path(__file__).parent / "datasets"

# Split files of a local Parquet copy: the layout of ../shared/data and of the Hub's own parquet exports.
PARQUET_PATTERNS: dict[str, tuple[str, ...]] = {
    "train": ("train.parquet", "train-*.parquet", "*/train-*.parquet"),
    "validation": ("validation.parquet", "validation-*.parquet", "*/validation-*.parquet", "val.parquet"),
    "test": ("test.parquet", "test-*.parquet", "*/test-*.parquet"),
}
# Sub-folders of an image folder, by split; the first one present wins.
FOLDER_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "validation": ("validation", "val", "valid", "develop", "dev"),
    "test": ("test", "testing"),
}

Channels = Literal[1, 3]

#: the Hub revision each built-in dataset is loaded at, so its data cannot change under a recipe (a recipe that names
#: another data.hub_id pins its own data.hub_revision). fashion_mnist is pinned to the Hub's parquet export branch,
#: not yet to a commit of it.
HUB_REVISIONS = {"uoft-cs/cifar10": "0b2714987fa478483af9968de7c934580d0bb9a2",
                 "ylecun/mnist": "77f3279092a1c1579b2250db8eafed0ad422088c",
                 "zalando-datasets/fashion_mnist": "refs/convert/parquet"}

__all__ = ["ImageSplit", "ImageData", "decode_images", "load_image_files", "cache_root", "load_parquet_images",
           "cifar10", "mnist", "fashion_mnist", "digits", "imagefolder"]


#: the task every dataset here feeds (a recipe binding one to another task fails at `deepcourse check`)
TASK = "image-classification"


@dataclass
class ImageSplit:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> ImageSplit:
        return ImageSplit(self.images.index_select(0, indices), self.labels.index_select(0, indices))


@dataclass
class ImageData:
    """What a dataset builder returns: the splits it has (of those asked for) and the class names."""

    splits: dict[str, ImageSplit]
    class_names: list[str]
    source: str  # where the images came from, for messages
    available: list[str] = field(default_factory=list)  # every split the source holds, loaded or not (messages)


# -- decoding ------------------------------------------------------------------------------------------------------
def _decode_one(name: str, data: bytes | str | Path, mode: str | None, size: int | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as opened:
            img: Image.Image = opened
            _refuse_bomb(name, img.width * img.height)
            want = mode or ("L" if img.mode in GRAYSCALE_MODES else "RGB")
            if img.mode != want:
                img = img.convert(want)
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{name}: image file not found") from None
    except Image.DecompressionBombError as exc:  # twice PIL's limit: refused by PIL itself, before we see the size
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        _refuse_bomb(name, int(pixels.group(1)) if pixels else None)
        raise  # pragma: no cover - _refuse_bomb always raises
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{name}: cannot decode image ({type(exc).__name__}: {exc})") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _refuse_bomb(name: str, pixels: int | None) -> None:
    """Refuse an image above PIL's pixel limit (`Image.MAX_IMAGE_PIXELS`, its guard against decompression bombs: a
    small file that decodes to gigabytes), naming the file and the limit; PIL alone only warns up to twice the limit
    and raises an exception of its own above it, which would end the process in a traceback."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or (pixels is not None and pixels <= limit):
        return
    shown = f"{pixels:,} pixels" if pixels is not None else f"more than {2 * limit:,} pixels"
    raise DataError(f"{name}: image of {shown}, above the limit of {limit:,} (PIL's Image.MAX_IMAGE_PIXELS, a guard "
                    f"against decompression bombs); refused without decoding it. Resize the image, or leave it out")


def decode_images(items: Sequence[tuple[str, bytes | str | Path]], *, mode: Literal["L", "RGB"] | None = None,
                  size: int | None = None, threads: int | None = None) -> torch.Tensor:
    """Decode (name, bytes or path) pairs into one uint8 tensor [N, C, H, W]; `name` goes in error messages.

    Without `mode`, the first image decides: grayscale stays one channel, anything else becomes RGB. Without
    `size`, every image must have the first image's size (a DataError names the first one that does not).
    """
    if not items:
        return torch.zeros(0, 1 if mode == "L" else 3, size or 1, size or 1, dtype=torch.uint8)
    with warnings.catch_warnings():  # PIL's own DecompressionBombWarning: `_refuse_bomb` says it, as an error
        from PIL import Image

        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return _decode_all(items, mode, size, threads)


def _decode_all(items: Sequence[tuple[str, bytes | str | Path]], mode: Literal["L", "RGB"] | None, size: int | None,
                threads: int | None) -> torch.Tensor:
    first = _decode_one(*items[0], mode, size)
    mode = mode or ("L" if first.shape[0] == 1 else "RGB")
    out = np.empty((len(items), *first.shape), dtype=np.uint8)
    out[0] = first

    def work(chunk: range) -> None:
        for i in chunk:
            array = _decode_one(*items[i], mode, size)
            if array.shape != first.shape:
                raise DataError(f"{items[i][0]}: image is {array.shape[2]}x{array.shape[1]} but "
                                f"{items[0][0]} is {first.shape[2]}x{first.shape[1]}; set data.size to resize "
                                f"every image to one square size")
            out[i] = array

    threads = threads or min(4, os.cpu_count() or 1)
    step = max(256, len(items) // (threads * 4) + 1)
    chunks = [range(i, min(i + step, len(items))) for i in range(1, len(items), step)]
    with ThreadPoolExecutor(threads) as pool:  # PIL's decoders release the GIL
        for future in [pool.submit(work, c) for c in chunks]:
            future.result()
    return torch.from_numpy(out)


def load_image_files(paths: Sequence[str | Path], *, channels: int, size: int) -> torch.Tensor:
    """Image files (for `predict`) as a uint8 batch the model was trained on: same channels, same size."""
    return decode_images([(str(p), Path(p)) for p in paths], mode="L" if channels == 1 else "RGB", size=size,
                         threads=1)


# -- cache -----------------------------------------------------------------------------------------------------------
def cache_root() -> Path:
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / \
        "deepcourse"
    return base / "vision"


def file_stamp(paths: Iterable[Path]) -> list[list[Any]]:
    """What identifies a version of the source files without reading them: path, size, modification time."""
    stamps = []
    for p in paths:
        st = p.stat()
        stamps.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return stamps


def cached_split(dataset: str, split: str, key: Any, build: Callable[[], tuple[ImageSplit, list[str]]]
                 ) -> tuple[ImageSplit, list[str]]:
    """Load a decoded split from the cache, or build and store it. Processes racing to build the same split
    (accelerate launch) wait on a lock, so the images are decoded once."""
    from filelock import FileLock
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    digest = hashlib.sha256(json.dumps([CACHE_VERSION, key], sort_keys=True, default=str).encode()).hexdigest()
    folder = cache_root()
    path = folder / f"{dataset}-{split}-{digest[:20]}.safetensors"

    def read() -> tuple[ImageSplit, list[str]] | None:
        if not path.exists():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                names = json.loads((f.metadata() or {})["class_names"])
            tensors = load_file(str(path))
            return ImageSplit(tensors["images"], tensors["labels"]), names
        except (SafetensorError, OSError, KeyError, ValueError):
            return None  # a damaged cache file is rebuilt

    found = read()
    if found is not None:
        return found
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the image cache folder {folder}: {exc}; set ${CACHE_ENV} to a writable "
                        f"folder") from None
    with FileLock(str(path) + ".lock"):
        found = read()
        if found is not None:
            return found
        split_data, names = build()
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        save_file({"images": split_data.images.contiguous(), "labels": split_data.labels.contiguous()}, str(tmp),
                  metadata={"class_names": json.dumps(names), "key": json.dumps(key, default=str)[:4000]})
        os.replace(tmp, path)
    return split_data, names


# -- Parquet / Hub datasets (CIFAR-10, MNIST, Fashion-MNIST, digits) ------------------------------------------------
def _columns(ds: Any, source: str) -> tuple[str, str, list[str] | None]:
    """(image column, label column, class names if the label is a ClassLabel) of an HF dataset."""
    import datasets

    features = ds.features
    image = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
    image = image or next((k for k in ("img", "image", "pixel_values") if k in features), None)
    label = next((k for k, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    label = label or next((k for k in ("label", "labels", "fine_label") if k in features), None)
    if image is None or label is None:
        raise DataError(f"{source}: expected an image column and a label column, found "
                        f"{', '.join(features) or 'no columns'}")
    names = features[label].names if isinstance(features[label], datasets.ClassLabel) else None
    return image, label, names


def _decode_hf_split(ds: Any, row_names: Callable[[int], str], mode: Literal["L", "RGB"] | None, source: str
                     ) -> tuple[ImageSplit, list[str]]:
    import datasets

    image_col, label_col, names = _columns(ds, source)
    if isinstance(ds.features[image_col], datasets.Image):
        ds = ds.cast_column(image_col, datasets.Image(decode=False))
    table = ds.with_format("arrow")[:]
    column = table.column(image_col).to_pylist()
    items = []
    for i, value in enumerate(column):
        data = value.get("bytes") or value.get("path") if isinstance(value, dict) else value
        if not data:
            raise DataError(f"{row_names(i)}: no image data")
        items.append((row_names(i), data))
    labels = torch.from_numpy(np.array(table.column(label_col).to_numpy(zero_copy_only=False), dtype=np.int64))
    if names is None:
        names = [str(i) for i in range(int(labels.max()) + 1)] if len(labels) else []
    return ImageSplit(decode_images(items, mode=mode), labels), list(names)


def _parquet_row_names(files: Sequence[Path]) -> Callable[[int], str]:
    """'file.parquet row 17' for a row of the concatenated files: corrupt images are reported where they are."""
    import pyarrow.parquet as pq

    bounds, start = [], 0
    for f in files:
        n = pq.ParquetFile(f).metadata.num_rows
        bounds.append((start, start + n, f))
        start += n

    def name(i: int) -> str:
        for lo, hi, f in bounds:
            if lo <= i < hi:
                return f"{f} row {i - lo}"
        return f"row {i}"
    return name


def load_parquet_images(dataset: str, *, data_dir: str | None, splits: Sequence[str], hub_id: str | None,
                        mode: Literal["L", "RGB"] | None, hub_kwargs: dict[str, Any] | None = None,
                        hub_revision: str | None = None) -> ImageData:
    """Decoded splits of a Parquet image dataset: local copy (data_dir, then $DEEPCOURSE_DATA/<dataset>), else
    the Hub. Cached splits are loaded without opening the Parquet files."""
    found, _ = locate_splits(dataset, data_dir, PARQUET_PATTERNS, splits)
    folder, present = present_splits(dataset, data_dir, PARQUET_PATTERNS)
    out: dict[str, ImageSplit] = {}
    names: list[str] = []
    for split, files in found.items():  # cache hits need nothing but the files' sizes and times
        key: dict[str, Any] = {"files": file_stamp(files), "mode": mode}
        out[split], names = cached_split(dataset, split, key, functools.partial(_build_local, split, files, mode))
    if folder is not None:  # the local copy, even when it lacks a split that was asked for
        return ImageData(out, names, str(folder), available=present)
    revision = hub_revision or HUB_REVISIONS.get(hub_id or "")
    loaded = load_hf_splits(dataset, data_dir=data_dir, patterns=PARQUET_PATTERNS, splits=splits, hub_id=hub_id,
                            revision=revision, hub_kwargs=hub_kwargs)
    for split, ds in loaded.items():
        source = f"{hub_id} ({split})"
        key = {"hub": hub_id, "revision": revision, "fingerprint": ds._fingerprint, "mode": mode}
        out[split], names = cached_split(dataset, split, key, functools.partial(
            _decode_hf_split, ds, functools.partial(_row_name, source), mode, source))
    return ImageData(out, names, f"the Hugging Face Hub ({hub_id})")


def _row_name(source: str, row: int) -> str:
    return f"{source} row {row}"


def _build_local(split: str, files: list[Path], mode: Literal["L", "RGB"] | None) -> tuple[ImageSplit, list[str]]:
    import datasets

    try:
        ds = datasets.load_dataset("parquet", data_files={split: [str(f) for f in files]}, split=split)
    except Exception as exc:  # noqa: BLE001 - unreadable Parquet: name the files
        raise DataError(f"cannot read {', '.join(map(str, files))}: {type(exc).__name__}: {exc}") from None
    return _decode_hf_split(ds, _parquet_row_names(files), mode, str(files[0]))


@DATASETS.register("cifar10", aliases=("cifar-10",), task=TASK)
def cifar10(splits: tuple[str, ...], data_dir: str | None = None, hub_id: str = "uoft-cs/cifar10",
            hub_revision: str | None = None) -> ImageData:
    """CIFAR-10: 50,000 train and 10,000 test 32x32 colour images of 10 classes (Krizhevsky 2009).

    hub_revision: the Hub commit to load (default: the one pinned for the default hub_id)."""
    return load_parquet_images("cifar10", data_dir=data_dir, splits=splits, hub_id=hub_id, mode="RGB",
                               hub_revision=hub_revision)


@DATASETS.register("mnist", task=TASK)
def mnist(splits: tuple[str, ...], data_dir: str | None = None, hub_id: str = "ylecun/mnist",
          hub_revision: str | None = None) -> ImageData:
    """MNIST handwritten digits: 60,000 train and 10,000 test 28x28 grayscale images (LeCun et al. 1998).

    hub_revision: the Hub commit to load (default: the one pinned for the default hub_id)."""
    return load_parquet_images("mnist", data_dir=data_dir, splits=splits, hub_id=hub_id, mode="L",
                               hub_revision=hub_revision)


@DATASETS.register("fashion_mnist", aliases=("fashion-mnist",), task=TASK)
def fashion_mnist(splits: tuple[str, ...], data_dir: str | None = None,
                  hub_id: str = "zalando-datasets/fashion_mnist", hub_revision: str | None = None) -> ImageData:
    """Fashion-MNIST: Zalando's 28x28 grayscale clothing images in MNIST's format, 10 classes (Xiao et al. 2017).

    hub_revision: the Hub revision to load (default: the one pinned for the default hub_id)."""
    return load_parquet_images("fashion_mnist", data_dir=data_dir, splits=splits, hub_id=hub_id, mode="L",
                               hub_revision=hub_revision)


@DATASETS.register("digits", task=TASK)
def digits(splits: tuple[str, ...], data_dir: str | None = None) -> ImageData:
    """UCI optical digits: 1,797 8x8 grayscale images shipped with the plugin, so the quickstart runs offline.

    scikit-learn's load_digits copy, split train 1,437 / test 360 (CC BY 4.0, see datasets/digits/ATTRIBUTION.md)."""
    return load_parquet_images("digits", data_dir=data_dir or str(BUNDLED / "digits"), splits=splits,
                               hub_id=None, mode="L")


# -- image folders ---------------------------------------------------------------------------------------------------
def _split_folder(root: Path, split: str) -> Path | None:
    return next((root / name for name in FOLDER_SPLITS.get(split, (split,)) if (root / name).is_dir()), None)


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _find_image_root(data_dir: str | None) -> Path:
    tried = []
    for folder in candidate_dirs("imagefolder", data_dir):
        tried.append(str(folder))
        if folder.is_dir() and any(_split_folder(folder, s) for s in FOLDER_SPLITS):
            return folder
    raise DataError("data.data_dir: imagefolder needs a folder holding train/ (and val/ or test/) with one "
                    "sub-folder of images per class; tried: " + ("; ".join(tried) if tried else
                                                                  "nothing (data.data_dir is not set)"))


@DATASETS.register("imagefolder", aliases=("image_folder",), task=TASK)
def imagefolder(splits: tuple[str, ...], data_dir: str | None = None, size: Annotated[int, Field(gt=0)] | None = None,
                channels: Channels | None = None, classes: Annotated[list[str], Unique] | None = None) -> ImageData:
    """A folder of labelled images: data_dir/{train,val|develop,test}/<class>/*.png|jpg|...

    Any small labelled set, e.g. a 12-class 28x28 character set. `size` resizes every image to size x size;
    `channels` forces 1 (grayscale) or 3 (RGB), default: as the first image; `classes` fixes the label order
    (default: train/'s sub-folders, sorted)."""
    root = _find_image_root(data_dir)
    folders = {s: _split_folder(root, s) for s in splits}
    known = {name for names in FOLDER_SPLITS.values() for name in names}
    available = [s for s in FOLDER_SPLITS if _split_folder(root, s)] + [
        p.name for p in sorted(root.iterdir()) if p.is_dir() and p.name not in known and not p.name.startswith(".")]
    if classes is None:
        train = _split_folder(root, "train")
        reference = train or next((f for f in folders.values() if f is not None), None)
        classes = _class_folders(reference) if reference else []
    if not classes:
        raise DataError(f"{root}: no class sub-folders found in its train/ folder")
    index = {name: i for i, name in enumerate(classes)}
    mode: Literal["L", "RGB"] | None = None if channels is None else ("L" if channels == 1 else "RGB")
    out: dict[str, ImageSplit] = {}
    for split, folder in folders.items():
        if folder is None:
            continue
        unknown = [c for c in _class_folders(folder) if c not in index]
        if unknown:
            raise DataError(f"{folder / unknown[0]}: class folder not among the training classes "
                            f"({', '.join(classes)})")
        files = [(index[c], f) for c in classes if (folder / c).is_dir() for f in _image_files(folder / c)]
        if not files:
            raise DataError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in its class folders")
        key = {"files": file_stamp(f for _, f in files), "size": size, "mode": mode, "classes": classes}

        def build(files: list[tuple[int, Path]] = files) -> tuple[ImageSplit, list[str]]:
            images = decode_images([(str(f), f) for _, f in files], mode=mode, size=size)
            return ImageSplit(images, torch.tensor([label for label, _ in files], dtype=torch.int64)), classes

        out[split], _ = cached_split("imagefolder", split, key, build)
    if out and mode is None:  # the first split decided; make every split agree (a colour test set, a gray train)
        first = next(iter(out.values())).images.shape[1]
        if any(s.images.shape[1] != first for s in out.values()):
            raise DataError(f"{root}: some splits are grayscale and others colour; set data.channels = 1 or 3")
    return ImageData(out, list(classes), str(root), available=available)
