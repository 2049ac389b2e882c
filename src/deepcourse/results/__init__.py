"""The results wing: what is read back from finished runs.

- `inference`: a trained run loaded back (`load_trained`), `deepcourse evaluate` and `predict`;
- `report`: RUN/report.md with its curves, from the files a run left (and what `fit` already evaluated);
- `compare`: several runs side by side; `stats`: mean ± std, confidence intervals, significance;
- `explain`: `deepcourse explain` (the task draws, this module loads and writes);
- `predictions`: per-sample predictions written as JSON Lines.
"""
