"""The run-directory wing: the files a run leaves, and writing them so that a crash never leaves half of one.

- `files`: atomic writes of files and folders, JSON and JSON Lines;
- `layout`: a run directory's names (`runs/NAME/ID/`), run.json, metrics.jsonl, and cleaning up an unstarted run;
- `lock`: one writer per run directory (pid and host of the holder; a dead holder's lock is taken over);
- `outputs`: checking an output location before anything is computed.
"""
