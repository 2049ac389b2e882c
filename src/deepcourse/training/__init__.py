"""The training wing: the one loop every task shares, and the single-concept modules around it.

- `loop`: `fit`, read top to bottom (build the run, open or resume its directory, train, score the holdout);
- `build`: the run's pieces from its recipe (`build_run`: task, data, model, optimizer, loaders, schedule, callbacks);
- `accelerator`: HuggingFace Accelerate set up for a recipe (precision, threads, the CPU allocator);
- `checkpoint`: saving and loading training states (safetensors + JSON), best weights, the latest intact one;
- `resume`: what a resume reads of its run directory, once (recipe, artifacts, settings, checkpoints);
- `evaluation`: the one evaluation loop (during training, `deepcourse evaluate`, report figures) and the holdout;
- `stopping`: Ctrl-C and SIGTERM agreed across processes, early stopping;
- `meter`, `tracking`, `callbacks`, `collective`: the loss meter and training metrics, metrics.jsonl and trackers,
  the callback protocol, and "run on the main process, share the answer";
- `lrfind`: the learning-rate range test, on the same pieces as a run;
- `sampling`: the order of training batches (seed-and-epoch shuffles, length groups, batches cut on the device);
- `cluster`: `run --slurm`, each srun task one process, from Slurm's own variables.
"""
