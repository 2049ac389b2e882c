"""Write the bundled UCI digits as an image folder, to try `recipes/imagefolder_alexnet.toml` without a dataset:

    python plugins/vision/scripts/make_imagefolder.py data/characters [--size 28]

Creates OUT/{train,develop,test}/<digit>/<n>.png: the bundled train split minus 15% for develop, and the test
split, each image upscaled from 8x8 to SIZE x SIZE grayscale PNG.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

BUNDLED = Path(__file__).resolve().parents[1] / "src" / "deepcourse_vision" / "datasets" / "digits"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=28)
    args = parser.parse_args()
    for split in ("train", "test"):
        table = pq.read_table(BUNDLED / f"{split}.parquet").to_pylist()
        for i, row in enumerate(table):
            folder = "develop" if split == "train" and i % 7 == 0 else split
            target = args.out / folder / str(row["label"])
            target.mkdir(parents=True, exist_ok=True)
            img = Image.open(io.BytesIO(row["img"]["bytes"])).resize((args.size, args.size), Image.Resampling.BICUBIC)
            img.save(target / f"{i:04d}.png")
    print(f"wrote {args.out}/{{train,develop,test}}/<digit>/*.png")


if __name__ == "__main__":
    main()
