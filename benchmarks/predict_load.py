"""Does `deepcourse predict` stream? Peak memory for 1,000 vs 10,000 inputs (and 10,000 with a bigger batch).

Makes N small PNG files, trains the quickstart recipe for a few steps, then runs `deepcourse predict RUN - --json`
over 1,000 and 10,000 paths read from stdin, each in its own process, and prints each run's peak RSS (ru_maxrss)
and time. Streaming in batches means the peak does not grow with the number of inputs.

    python benchmarks/predict_load.py [--inputs 10000]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEASURE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdin=sys.stdin, "
           "stdout=subprocess.DEVNULL); print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def make_images(folder: Path, n: int) -> list[str]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:05d}.png"
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), "L").save(path)
        paths.append(str(path))
    return paths


def predict(run: Path, paths: list[str], batch_size: int) -> tuple[float, float]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "deepcourse", "predict", str(run),
                          "-", "--json", "--batch-size", str(batch_size)],
                         input="\n".join(paths) + "\n", capture_output=True, text=True)
    code, peak_kb = out.stdout.split()
    if code != "0":
        raise SystemExit(f"predict failed: {out.stderr}")
    return int(peak_kb) / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp) / "images", args.inputs)
        run = Path(tmp) / "run"
        subprocess.run([sys.executable, "-m", "deepcourse", "run", str(REPO / "recipes" / "quickstart.toml"),
                        "--run-dir", str(run), "--set", "train.max_steps=20", "--set", "train.progress=false",
                        "--no-report"], check=True, capture_output=True)
        rows = []
        for n, batch in ((args.inputs // 10, 64), (args.inputs, 64), (args.inputs, 512)):
            peak, seconds = predict(run, paths[:n], batch)
            rows.append((n, batch, peak, seconds))
            print(f"{n:>6} inputs, batch {batch:>4}: peak RSS {peak:7.1f} MiB, {seconds:6.1f} s "
                  f"({n / seconds:,.0f} inputs/s including start-up)")
        print(json.dumps({"peak_rss_ratio_10x_inputs": round(rows[1][2] / rows[0][2], 3)}))


if __name__ == "__main__":
    main()
