"""Save chosen validation images of a finished image-classification run as PNG files, for `deepcourse explain`.

    python docs/img/looking-inside/validation_images.py RUN_DIR OUT_DIR ID...

IDs are positions in the run's validation split, the `id` column `deepcourse evaluate --write-predictions` writes,
so a figure can show an image the network got wrong. The split is rebuilt exactly as training carved it (the run's
recipe and seed, `data.val_split`), so these are images the network never trained on. Files are named
`val_<id>_<class>.png`, the class being the true one.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image

from deepcourse.api import build_task, load_recipe


def main(run_dir: Path, out: Path, ids: list[int]) -> None:
    recipe = load_recipe(run_dir / "recipe.toml")
    task = build_task(recipe)
    artifacts = json.loads((run_dir / "artifacts.json").read_text(encoding="utf-8"))
    split = task.setup_data(recipe.data, splits=("validation",), seed=recipe.seed, artifacts=artifacts)
    images, labels = split.splits["validation"].arrays["image"], split.splits["validation"].arrays["label"]
    out.mkdir(parents=True, exist_ok=True)
    for i in ids:
        pixels = images[i].permute(1, 2, 0).numpy()  # uint8 [H, W, C]
        image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
        path = out / f"val_{i:05d}_{artifacts['class_names'][int(labels[i])]}.png"
        image.save(path)
        print(path)


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__.split("\n\n")[1])
    main(Path(sys.argv[1]), Path(sys.argv[2]), [int(a) for a in sys.argv[3:]])
