"""Every case of the bad-input corpus exits 2 with a message naming the key path or file, and no traceback."""
from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest

from click.testing import CliRunner

from deepcourse.cli import main

CORPUS = Path(__file__).parent / "bad_inputs"
CASES = tomllib.loads((CORPUS / "expected.toml").read_text())


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 40
    for name, case in CASES.items():
        assert "args" in case or (CORPUS / f"{name}.toml").exists(), name


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name: str, tmp_path: Path, plugin_site, monkeypatch) -> None:
    case = CASES[name]
    work = tmp_path / "corpus"
    shutil.copytree(CORPUS, work)  # run in a copy: a wrongly created run directory must not go unnoticed
    before = {p.relative_to(work) for p in work.rglob("*")}
    args = case.get("args", ["run", f"{name}.toml"])
    if args[0] == "run" and "--resume" not in args:
        args = [*args, "--runs-root", "runs"]
    monkeypatch.chdir(work)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a missing local copy must not turn into a network wait
    out = CliRunner().invoke(main, args)  # in-process: the same code path as the console script, faster
    assert out.exit_code == 2, f"exit {out.exit_code}\n{out.output}\n{out.exc_info}"
    assert case["expect"] in out.stderr, out.stderr
    assert "Traceback" not in out.output
    after = {p.relative_to(work) for p in work.rglob("*")}
    assert after == before, f"left behind: {sorted(map(str, after - before))}"
