"""Every case of the bad-input corpus exits 2 with a message naming the key path or file, and no traceback.

A case may ask for a finished toy run in its folder first (`run = "NAME"`: trained once per session, copied in), for
standard input (`stdin`), an empty folder (`empty_dir`: git keeps none), a folder this user cannot write in
(`read_only`), or a run directory another writer holds (`locked`: the test holds its lock).
"""
from __future__ import annotations

import os
import shutil
import tomllib
from contextlib import ExitStack
from pathlib import Path

import pytest
from click.testing import CliRunner

from deepcourse.cli.main import main
from deepcourse.rundir import lock as runlock

CORPUS = Path(__file__).parent / "bad_inputs"
CASES = tomllib.loads((CORPUS / "expected.toml").read_text())


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 150
    for name, case in CASES.items():
        assert "args" in case or (CORPUS / f"{name}.toml").exists(), name
        assert set(case) <= {"args", "expect", "run", "stdin", "empty_dir", "read_only", "locked"}, name


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory, plugin_site) -> Path:
    """A toy run trained to the end (best weights, checkpoints, metrics), for the cases about using a run."""
    run = tmp_path_factory.mktemp("finished") / "run"
    out = CliRunner().invoke(main, ["run", str(CORPUS / "base.toml"), "--run-dir", str(run), "--no-report"])
    assert out.exit_code == 0, out.output
    return run


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name: str, tmp_path: Path, plugin_site, finished_run: Path, monkeypatch) -> None:
    case = CASES[name]
    work = tmp_path / "corpus"
    shutil.copytree(CORPUS, work)  # run in a copy: a wrongly created run directory must not go unnoticed
    if "run" in case:
        shutil.copytree(finished_run, work / case["run"])
    if "empty_dir" in case:
        (work / case["empty_dir"]).mkdir(parents=True)
    if "read_only" in case:
        read_only_folder(work / case["read_only"], monkeypatch)
    with ExitStack() as held:
        if "locked" in case:
            held.enter_context(runlock.acquire(work / case["locked"]))
        check_case(case, name, work, monkeypatch)


def check_case(case: dict, name: str, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {p.relative_to(work) for p in work.rglob("*")}
    args = case.get("args", ["run", f"{name}.toml"])
    if args[0] == "run" and not {"--resume", "--runs-root", "--run-dir"} & set(args):
        args = [*args, "--runs-root", "runs"]
    monkeypatch.chdir(work)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a missing local copy must not turn into a network wait
    monkeypatch.setenv("DEEPCOURSE_DATA", str(work / "no_shared_data"))  # the corpus is all there is
    out = CliRunner().invoke(main, args, input=case.get("stdin"))  # in-process: the console script's code path
    assert out.exit_code == 2, f"exit {out.exit_code}\n{out.output}\n{out.exc_info}"
    assert case["expect"] in out.stderr, out.stderr
    assert "Traceback" not in out.output
    after = {p.relative_to(work) for p in work.rglob("*")}
    assert after == before, f"left behind: {sorted(map(str, after - before))}"


def read_only_folder(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `folder` read-only; for root, who may write anywhere, also make `os.access` say what it would say to
    anyone else (the permission bits are what the command checks)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        real = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path).absolute() == folder
                            and mode & os.W_OK else real(path, mode, **kw))
