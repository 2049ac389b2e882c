"""The NER trials table: what each change to the BiLSTM-CRF recipe does on text it never trained or selected on.

Every trial is `benchmarks/ner_trials_base.toml` (the shipped recipe as it was before the table; or the recipe it
names) with a few keys set, run as a seeds-only sweep
(`deepcourse sweep RECIPE --seeds 3`, seeds 1-3) with `data.holdout = 0.1`: the last tenth of train's documents is
never trained on, dev selects the epoch as usual, and the selected weights are scored once on the held-out tenth
at the end of each run (`RUN/holdout.json`, and `summary.json`'s "holdout"). The table gives dev and held-out F1 as
mean ± std over the seeds and Welch's two-sided p-value of the held-out F1 against the first trial named.

Trials run `--parallel` at a time (default 2: this project's reference machine has 2 cores, and each run uses one
thread, `train.threads = 1`); a trial whose sweep folder under `--root` already holds its finished runs is read,
not run again, so the command can be repeated to add trials or to redraw the table.

    export DEEPCOURSE_DATA=/path/to/data          # conll2003/{train,dev}.txt and glove/
    python benchmarks/ner_trials.py                          # every trial below
    python benchmarks/ner_trials.py --trials base,ema,sgd    # some of them (the first is the reference row)
    python benchmarks/ner_trials.py --table-only             # the table from what has run
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from deepcourse.results.stats import summarize, welch_p

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "benchmarks/ner_trials_base.toml"  # the shipped recipe as it was before this table
EMA = 'train.average={method="ema", decay=0.999}'
COSINE = [EMA, 'scheduler.name="cosine"', "train.epochs=20", "train.early_stopping={patience=20}"]  # never stops

#: name -> (what changed, recipe, keys set). Each is measured against the first trial of a table.
TRIALS: dict[str, tuple[str, str, list[str]]] = {
    "base": ("the recipe before this table (Adam 0.002 constant, batch 32, char CNN, hidden 100 per direction, "
             "25 epochs, early stopping after 5 without improvement)", RECIPE, []),
    "singleton": ("+ singleton dropout 0.5", RECIPE, ["model.singleton_dropout=0.5"]),
    "sgd": ("NCRF++'s optimizer in 20 epochs (SGD 0.015, decay 0.1 per epoch, batch 10, summed loss, cased words)",
            "recipes/ner_ncrfpp.toml", ["data.group_by_length=true", "train.epochs=20", "scheduler.decay=0.1"]),
    "ema": ("+ an EMA of the weights (decay 0.999 per step)", RECIPE, [EMA]),
    "ema_locked": ("+ EMA + locked (variational) dropout on the LSTM's inputs and outputs", RECIPE,
                   [EMA, "model.locked_dropout=true"]),
    "ema_cosine": ("+ EMA, the lr decayed to 0 by a cosine over 20 epochs, no early stopping (the shipped recipe)",
                   RECIPE, COSINE),
    "ema_cosine_singleton": ("+ EMA + cosine + singleton dropout 0.5", RECIPE,
                             [*COSINE, "model.singleton_dropout=0.5"]),
    "ema_cosine_hidden200": ("+ EMA + cosine, hidden 200 per direction", RECIPE, [*COSINE, "model.hidden_size=200"]),
    "ema_cosine_charlstm": ("+ EMA + cosine, a character BiLSTM in place of the CNN (Lample et al. 2016)", RECIPE,
                            [*COSINE, 'model.char_features="lstm"']),
    "ema_cosine_layers2": ("+ EMA + cosine, two BiLSTM layers", RECIPE, [*COSINE, "model.num_layers=2"]),
}


def sweep_folder(root: Path, name: str, seeds: int) -> Path | None:
    """The newest sweep folder of trial `name` holding at least `seeds` finished runs, or None."""
    for folder in sorted(root.glob(f"{name}/*/sweep-*"), reverse=True):
        if len(finished(folder)) >= seeds:
            return folder
    return None


def finished(folder: Path) -> list[dict]:
    runs = []
    for summary in sorted(folder.glob("*/summary.json")):
        runs.append(json.loads(summary.read_text()))
    return runs


def start(root: Path, name: str, seeds: int) -> subprocess.Popen[bytes]:
    _, recipe, keys = TRIALS[name]
    if seeds > 1:
        command = ["deepcourse", "sweep", recipe, "--seeds", str(seeds), "-j", "1", "--runs-root", str(root / name)]
    else:  # one seed is one run (a sweep needs something to vary), in a folder laid out as a sweep's
        folder = root / name / "run" / "sweep-1" / "seed"
        command = ["deepcourse", "run", recipe, "--no-report", "--run-dir", str(folder)]
    command += ["--set", "data.holdout=0.1"]
    for key in keys:
        command += ["--set", key]
    log = (root / f"{name}.log").open("wb")
    print(f"start {name}: {' '.join(command)}", flush=True)
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())


def run_trials(root: Path, names: list[str], seeds: int, parallel: int) -> None:
    todo = [n for n in names if sweep_folder(root, n, seeds) is None]
    running: dict[str, subprocess.Popen[bytes]] = {}
    while todo or running:
        while todo and len(running) < parallel:
            name = todo.pop(0)
            running[name] = start(root, name, seeds)
        time.sleep(5)
        for name, process in list(running.items()):
            if process.poll() is not None:
                print(f"done {name} (exit {process.returncode})", flush=True)
                del running[name]


def table(root: Path, names: list[str], seeds: int, base: tuple[float, float, int] | None) -> str:
    """One row per trial (a trial stopped early shows the seeds it finished); p: Welch's test of the held-out F1
    against the first row's runs, or against `base` (mean, std, n of a reference measured before)."""
    from scipy import stats

    rows, reference = [], None
    for name in names:
        folder = sweep_folder(root, name, seeds) or sweep_folder(root, name, 1)
        if folder is None:
            rows.append(f"| {name}: {TRIALS[name][0]} | not run | | | | |")
            continue
        runs = finished(folder)[:seeds]
        dev = [100 * r["best"]["f1"] for r in runs]
        held = [100 * r["holdout"]["f1"] for r in runs]
        if base is not None and len(held) > 1:
            mean, std, n = base
            p: float | None = float(stats.ttest_ind_from_stats(statistics.fmean(held), statistics.stdev(held),
                                                               len(held), mean, std, n, equal_var=False).pvalue)
        else:
            reference = held if reference is None else reference
            p = welch_p(held, reference) if held is not reference else None
        rows.append(f"| {name}: {TRIALS[name][0]} | {summarize(dev, 'f1', 100).shown(2)} | "
                    f"{summarize(held, 'f1', 100).shown(2)} | {'-' if p is None else f'{p:.3f}'} | "
                    f"{statistics.fmean(r['epochs'] for r in runs):.3g} | "
                    f"{statistics.fmean(r['wall_time_s'] for r in runs):,.0f} s |")
    versus = "the reference given" if base else "first row"
    head = [f"| trial: what changed | dev F1 | holdout F1 | p (holdout, vs {versus}) | epochs | wall time per run |",
            "|---|---|---|---|---|---|"]
    return "\n".join(head + rows) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", default=",".join(TRIALS), help="comma-separated; the first is the reference")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=2, help="trials at a time (one run each, one thread)")
    parser.add_argument("--root", type=Path, default=ROOT / "runs" / "ner-trials")
    parser.add_argument("--table-only", action="store_true", help="draw the table from the finished trials")
    parser.add_argument("--base-stats", metavar="MEAN,STD,N",
                        help="compare with a reference measured before instead of the first row: its held-out F1 as "
                             "mean, std and number of seeds (docs/course-notes.md: 90.02,0.07,3 for `base`)")
    args = parser.parse_args()
    names = [n.strip() for n in args.trials.split(",") if n.strip()]
    unknown = [n for n in names if n not in TRIALS]
    if unknown:
        print(f"ner_trials: unknown trial(s) {', '.join(unknown)}; known: {', '.join(TRIALS)}", file=sys.stderr)
        return 2
    if not args.table_only and not os.environ.get("DEEPCOURSE_DATA"):
        print("ner_trials: set DEEPCOURSE_DATA to the folder holding conll2003/ and glove/", file=sys.stderr)
        return 2
    args.root.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        run_trials(args.root, names, args.seeds, args.parallel)
    base = None
    if args.base_stats:
        try:
            mean, std, n = args.base_stats.split(",")
            base = (float(mean), float(std), int(n))
        except ValueError:
            print(f"ner_trials: --base-stats {args.base_stats!r}: give MEAN,STD,N such as 90.02,0.07,3",
                  file=sys.stderr)
            return 2
    print(table(args.root, names, args.seeds, base), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
