"""Datasets: image folders, Parquet copies, the bundled digits, the decode-once cache, validation carving, errors."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from vision_fixtures import RECIPES, make_imagefolder, make_parquet, png_bytes

from deepcourse.api import DATASETS, DataError, RecipeError, call_builder, load_recipe
from deepcourse_vision import data as vision_data


def load(name: str, splits: tuple[str, ...], **options):
    provided = {"splits": splits, "data_dir": options.pop("data_dir", None)}
    return call_builder(DATASETS.get(name), options, loc="data", provided=provided)


def test_imagefolder_loads_splits_classes_and_labels(image_root: Path) -> None:
    d = load("imagefolder", ("train", "validation", "test"), data_dir=str(image_root))
    assert d.class_names == ["a", "b", "c"]
    assert set(d.splits) == {"train", "validation", "test"}  # develop/ is the validation split
    train = d.splits["train"]
    assert train.images.shape == (18, 3, 12, 12) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    import numpy as np
    from PIL import Image
    first = np.array(Image.open(image_root / "train" / "b" / "000.png"))
    assert torch.equal(train.images[6], torch.from_numpy(first).permute(2, 0, 1))


def test_imagefolder_grayscale_resize_and_mixed_sizes(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "gray", channels=1, size=10, splits=("train",))
    assert load("imagefolder", ("train",), data_dir=str(root)).splits["train"].images.shape == (18, 1, 10, 10)
    from PIL import Image
    Image.new("L", (14, 9)).save(root / "train" / "a" / "odd.png")
    with pytest.raises(DataError, match="odd.png: image is 14x9"):
        load("imagefolder", ("train",), data_dir=str(root))
    resized = load("imagefolder", ("train",), data_dir=str(root), size=16, channels=3)
    assert resized.splits["train"].images.shape == (19, 3, 16, 16)


def test_imagefolder_errors_name_the_place(tmp_path: Path, image_root: Path) -> None:
    with pytest.raises(DataError, match="data.data_dir: folder '.*nowhere' does not exist"):
        load("imagefolder", ("train",), data_dir=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="imagefolder needs a folder"):
        load("imagefolder", ("train",), data_dir=str(tmp_path / "empty"))
    (image_root / "test" / "zebra").mkdir()
    (image_root / "test" / "zebra" / "1.png").write_bytes(png_bytes(__import__("numpy").zeros((12, 12, 3), "uint8")))
    with pytest.raises(DataError, match="zebra: class folder not among the training classes"):
        load("imagefolder", ("test",), data_dir=str(image_root))
    (image_root / "train" / "b" / "007.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    with pytest.raises(DataError, match=r"train/b/007\.png: cannot decode image"):
        load("imagefolder", ("train",), data_dir=str(image_root))


def test_images_are_decoded_once(image_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load("imagefolder", ("train",), data_dir=str(image_root)).splits["train"]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(vision_data, "_decode_one", no_decoding)
    again = load("imagefolder", ("train",), data_dir=str(image_root)).splits["train"]
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    touched = image_root / "train" / "a" / "000.png"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded again"):  # a changed file invalidates the cache
        load("imagefolder", ("train",), data_dir=str(image_root))


def test_parquet_dataset_and_cache(mnist_like: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = load("mnist", ("train", "test"))
    assert d.splits["train"].images.shape == (60, 1, 28, 28) and d.splits["test"].images.shape == (20, 1, 28, 28)
    assert d.class_names == [str(i) for i in range(10)]
    assert d.splits["train"].labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    monkeypatch.setattr(vision_data, "_decode_one", lambda *a: (_ for _ in ()).throw(AssertionError("decoded")))
    monkeypatch.setattr(vision_data, "_build_local", lambda *a: (_ for _ in ()).throw(AssertionError("parquet")))
    assert torch.equal(load("mnist", ("train",)).splits["train"].images, d.splits["train"].images)


def test_corrupt_parquet_row_is_named(tmp_path: Path) -> None:
    make_parquet(tmp_path / "mnist" / "train.parquet", n=12, corrupt_rows=(7,))
    with pytest.raises(DataError, match=r"train\.parquet row 7: cannot decode image"):
        load("mnist", ("train",), data_dir=str(tmp_path / "mnist"))


def test_missing_dataset_lists_what_was_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPCOURSE_DATA", str(tmp_path))
    with pytest.raises(DataError) as err:
        load("cifar10", ("train",))
    text = str(err.value)
    assert "no copy of dataset 'cifar10'" in text and str(tmp_path / "cifar10") in text and "uoft-cs/cifar10" in text


def test_bundled_digits() -> None:
    d = load("digits", ("train", "test"))
    assert d.splits["train"].images.shape == (1437, 1, 8, 8) and len(d.splits["test"]) == 360
    assert d.class_names == [str(i) for i in range(10)]
    assert int(d.splits["train"].images.max()) == 255


def quickstart_task(*overrides: str):
    from deepcourse.api import build_task

    recipe = load_recipe(RECIPES / "quickstart.toml", overrides)
    return recipe, build_task(recipe)


def test_validation_is_carved_reproducibly() -> None:
    recipe, task = quickstart_task()
    a = task.setup_data(recipe.data, splits=("train", "validation"), seed=0)
    b = task.setup_data(recipe.data, splits=("train", "validation"), seed=0)
    c = task.setup_data(recipe.data, splits=("train", "validation"), seed=1)
    n_val = round(1437 * recipe.data.val_split)
    assert len(a.splits["validation"]) == n_val and len(a.splits["train"]) == 1437 - n_val
    assert torch.equal(a.splits["validation"].arrays["image"], b.splits["validation"].arrays["image"])
    assert not torch.equal(a.splits["validation"].arrays["label"], c.splits["validation"].arrays["label"])
    assert a.facts == {"num_classes": 10, "in_channels": 1, "image_size": 8}
    assert a.artifacts["class_names"] == [str(i) for i in range(10)] and len(a.artifacts["mean"]) == 1
    # the statistics come from the training split only
    train = a.splits["train"].arrays["image"].float() / 255
    assert abs(a.artifacts["mean"][0] - float(train.mean())) < 1e-5
    assert abs(a.artifacts["std"][0] - float(train.std())) < 1e-4


def test_missing_validation_split_says_how_to_get_one() -> None:
    recipe, task = quickstart_task("data.val_split=0.0")
    with pytest.raises(DataError, match="data.val_split"):
        task.setup_data(recipe.data, splits=("train", "validation"), seed=0)


def test_evaluation_without_training_data_uses_the_artifacts(tmp_path: Path) -> None:
    recipe, task = quickstart_task()
    trained = task.setup_data(recipe.data, splits=("train", "validation"), seed=0)
    _, fresh = quickstart_task()
    test = fresh.setup_data(recipe.data, splits=("test",), seed=0, artifacts=trained.artifacts)
    assert set(test.splits) == {"test"} and test.facts == trained.facts
    assert fresh.pipeline.mean == trained.artifacts["mean"]
    _, predictor = quickstart_task()
    assert predictor.setup_data(recipe.data, splits=(), seed=0, artifacts=trained.artifacts).splits == {}


def test_an_image_folder_with_its_own_validation_split_keeps_it(image_root: Path) -> None:
    """data.val_split carves only when the dataset has no validation split: develop/ is used as it is."""
    from deepcourse.api import build_task

    recipe = load_recipe(RECIPES / "imagefolder_alexnet.toml", [f"data.data_dir='{image_root}'", "data.val_split=0.5",
                                                                 "data.size=12"])
    # a RecipeWarning (deepcourse.errors; plugins import deepcourse.api only): the command line prints it
    with pytest.warns(UserWarning, match="data.val_split = 0.5 is not used: dataset 'imagefolder' has its own "
                                         "validation split"):
        bundle = build_task(recipe).setup_data(recipe.data, splits=("train", "validation"), seed=0)
    assert len(bundle.splits["train"]) == 18 and len(bundle.splits["validation"]) == 18  # all of train/, develop/
    import shutil

    shutil.rmtree(image_root / "develop")  # now it has none: half of train/ is carved off
    carved = build_task(recipe).setup_data(recipe.data, splits=("train", "validation"), seed=0)
    assert len(carved.splits["train"]) == 9 and len(carved.splits["validation"]) == 9


@pytest.mark.parametrize("name, hub_id", [("cifar10", "uoft-cs/cifar10"), ("mnist", "ylecun/mnist"),
                                          ("fashion_mnist", "zalando-datasets/fashion_mnist")])
def test_every_hub_load_is_pinned(name: str, hub_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a local copy the Hub is asked for the pinned revision of the default repository; a repository of
    your own needs data.hub_revision."""
    import datasets

    asked = []

    def fake_load(path, **kwargs):
        asked.append((path, kwargs))
        raise ConnectionError("no network in this test")

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    for offline in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "DEEPCOURSE_OFFLINE"):
        monkeypatch.delenv(offline, raising=False)
    monkeypatch.setenv("DEEPCOURSE_DATA", str(tmp_path))
    with pytest.raises(DataError, match=f"the Hugging Face Hub \\({hub_id} at {vision_data.HUB_REVISIONS[hub_id]}\\)"):
        load(name, ("train",))
    assert asked == [(hub_id, {"revision": vision_data.HUB_REVISIONS[hub_id]})]
    with pytest.raises(RecipeError, match="data.hub_revision: required to load 'me/copy' from the Hugging Face Hub"):
        load(name, ("train",), hub_id="me/copy")
    with pytest.raises(DataError, match=r"me/copy at abc123"):
        load(name, ("train",), hub_id="me/copy", hub_revision="abc123")
    assert asked[-1] == ("me/copy", {"revision": "abc123"})
