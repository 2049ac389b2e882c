"""Helpers for the documentation and the tests of deepcourse and its plugins, kept out of `deepcourse.api` so that a
plugin's import loads neither the command line nor the studies.

- `cli`: the command line as a click command, for `click.testing.CliRunner`;
- `zoo_section`, `count_flops`, `results_table`: the generated tables of the model zoo and results pages;
- `export_trained`, `EXPORT_FORMATS`, `Trained`, `load_trained`, `decode_output`: export a model built in a test (the
  zoo round-trips) or a run, and decode an exported tagger's scores;
- `native_bf16`: whether a device computes bfloat16 natively (what precision "auto" asks).
"""
from __future__ import annotations

from deepcourse.cli.docgen import count_flops, zoo_section
from deepcourse.cli.docgen import results as results_table
from deepcourse.cli.main import main as cli
from deepcourse.results.export import FORMATS as EXPORT_FORMATS
from deepcourse.results.export import export_trained
from deepcourse.results.inference import load_trained
from deepcourse.results.viterbi import decode_output
from deepcourse.training.build import Trained
from deepcourse.training.precision import native_bf16

__all__ = ["cli", "zoo_section", "count_flops", "results_table", "export_trained", "EXPORT_FORMATS", "Trained",
           "decode_output", "load_trained", "native_bf16"]
