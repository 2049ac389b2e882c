"""Helpers for the documentation and the tests of deepcourse and its plugins, kept out of `deepcourse.api` so that a
plugin's import loads neither the command line nor the studies.

- `cli`: the command line as a click command, for `click.testing.CliRunner`;
- `zoo_section`, `count_flops`, `results_table`: the generated tables of the model zoo and results pages.
"""
from __future__ import annotations

from deepcourse.cli.docgen import count_flops, zoo_section
from deepcourse.cli.docgen import results as results_table
from deepcourse.cli.main import main as cli

__all__ = ["cli", "zoo_section", "count_flops", "results_table"]
