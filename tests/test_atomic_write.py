"""`atomic_write`, the one way the core writes a file or a folder: under a temporary name, renamed into place only
when the writing ended without an error."""
from __future__ import annotations

from pathlib import Path

import pytest

from deepcourse.rundir.files import atomic_write, atomic_write_text


def test_a_file_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "study.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_text("half")
        assert target.read_text() == "old"  # nothing under the final name while it is written
        raise RuntimeError("failed mid-write")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["study.json"]
    with atomic_write(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["study.json"]


def test_a_block_that_leaves_nothing_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "predictions.txt"
    with atomic_write(target) as tmp:
        tmp.write_text("")
        tmp.unlink()
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_a_folder_is_replaced_whole_and_an_error_keeps_the_old_one(tmp_path: Path) -> None:
    best = tmp_path / "best"
    best.mkdir()
    (best / "stale.json").write_text("{}")
    (tmp_path / ".tmp-best").mkdir()  # a crashed write's leftover
    (tmp_path / ".tmp-best" / "junk").write_text("junk")
    with pytest.raises(RuntimeError), atomic_write(best, folder=True) as tmp:
        assert list(tmp.iterdir()) == []  # the leftover was cleared first
        (tmp / "model.safetensors").write_text("half")
        raise RuntimeError("failed mid-write")
    assert [p.name for p in best.iterdir()] == ["stale.json"] and sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    with atomic_write(best, folder=True) as tmp:
        (tmp / "model.safetensors").write_text("weights")
    assert {p.name: p.read_text() for p in best.iterdir()} == {"model.safetensors": "weights"}
    assert [p.name for p in tmp_path.iterdir()] == ["best"]
