"""Write the bundled `digits` dataset: scikit-learn's copy of the UCI optical digits as Parquet image files.

    python plugins/vision/scripts/make_digits.py [OUTPUT_DIR]

Same layout as the MNIST and CIFAR-10 Parquet copies (columns `img`: PNG bytes as a `datasets` Image, `label`:
ClassLabel "0".."9"), so the `digits` dataset goes through the same loader. The 1,797 8x8 images (pixel values
0..16, scaled to 0..255) are split 80/20, stratified, with a fixed seed: train 1,437, test 360. The output is
deterministic, so re-running the script reproduces the shipped files.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "deepcourse_vision" / "datasets" / "digits"

ATTRIBUTION = """\
# UCI optical recognition of handwritten digits (the `digits` dataset)

Source: E. Alpaydin and C. Kaynak, "Optical Recognition of Handwritten Digits", UCI Machine Learning Repository,
1998, https://doi.org/10.24432/C50P49, as distributed with scikit-learn (`sklearn.datasets.load_digits`: the
1,797 images of the repository's test part, 8x8 pixels, values 0..16).

License: Creative Commons Attribution 4.0 International (CC BY 4.0), https://creativecommons.org/licenses/by/4.0/

Changes: pixel values scaled from 0..16 to 0..255 (rounded) and stored as 8x8 grayscale PNG images in Parquet files
(columns `img`, `label`); split 80/20 stratified with seed 0 into train.parquet (1,437) and test.parquet (360) by
plugins/vision/scripts/make_digits.py.
"""


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(pixels, mode="L").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def main(out: Path = DEFAULT_OUT) -> None:
    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    index = np.arange(len(images))
    train_idx, test_idx = train_test_split(index, test_size=0.2, stratify=digits.target, random_state=0)
    features = Features({"img": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    out.mkdir(parents=True, exist_ok=True)
    for split, idx in (("train", np.sort(train_idx)), ("test", np.sort(test_idx))):
        ds = Dataset.from_dict({"img": [{"bytes": png(images[i]), "path": None} for i in idx],
                                "label": [int(digits.target[i]) for i in idx]}, features=features)
        ds.to_parquet(str(out / f"{split}.parquet"))
        print(f"{out / f'{split}.parquet'}: {len(ds)} images")
    (out / "ATTRIBUTION.md").write_text(ATTRIBUTION)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
