"""The command line: `deepcourse ...` (click). Nothing below imports it.

- `main`: the commands and the one place a `UserError` becomes exit status 2; `common`: options and error handling;
- `inspect`: `lr-find`, `explain`; `studies`: `tune`, `sweep`, `compare`; `scaffold`: `new-plugin` (from
  `templates/`); `docgen`: the tables the docs are generated from.
"""
