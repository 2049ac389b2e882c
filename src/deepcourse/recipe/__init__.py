"""The recipe wing: what a TOML recipe may say, and reading one into a validated `Recipe`.

- `schema`: the core keys, as pydantic models (`Recipe`, `DataSection`, ...);
- `builders`: checking a plugin table's keys against its builder's signature, and calling the builder;
- `load`: find, read, `extends`, `--set`, validate (`load_recipe`); every problem reported at once with its key path;
- `overrides`: `--set key=value`, and recipes as flat key paths (`flatten`, `differing_keys`);
- `searchspace`: a study's `[search.space]` and a sweep's grid;
- `shipped`: the recipes that ship with deepcourse, found by name.

Imports only the flat contract below it (errors, registry, discovery's plugin table); loading a recipe never
discovers plugins: the faces (command line, `deepcourse.run`, `deepcourse.api.load_recipe`) do that first.
"""
