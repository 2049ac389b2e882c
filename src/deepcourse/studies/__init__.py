"""The studies wing: many runs of one recipe, on one machine or a cluster.

- `spec`: what a study runs (`StudySpec`), read from its folder's study.json or sweep.json;
- `study`: an Optuna study's trials as processes (`deepcourse tune`), their command line and the best trial;
- `samplers`: the study's sampler, seeded per trial (every worker draws other trials), and its pruner;
- `tune`: a `[search]` table turned into a study, then final seeds of the best trial;
- `sweep`: a grid over `--set` values, with seeds, mean ± std and significance per point;
- `report`: the study's and the sweep's report; `store`: the study's storage (SQLite, PostgreSQL), every way it can
  be wrong named;
- `resume`: what a resumed or joined study keeps (its recipe as written, options, grid) and what it may change;
- `processes`: which GPU and how many CPU threads each run gets, a run that stops when its worker dies, a worker
  that stops on Ctrl-C (or a preemption) once its runs have saved;
- `pruning`: the callback that reports each evaluation to Optuna (registered through the core's entry point);
- `slurm`: the same study's workers as Slurm jobs (submitit).
"""
