"""Dataset builders: local copies first, the Hub copy's class ids turned into tag strings, clear errors."""
from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from deepcourse.api import DataError
from deepcourse_sequence import datasets as seq_datasets
from deepcourse_sequence.datasets import conll, conll2003, resolve_path


def test_conll2003_reads_the_local_copy_from_deepcourse_data(tmp_path: Path, mini: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conll2003").mkdir()
    (tmp_path / "conll2003" / "dev.txt").write_text((mini / "dev.txt").read_text())
    monkeypatch.setenv("DEEPCOURSE_DATA", str(tmp_path))
    loaded = conll2003().load(["train", "validation"])
    assert list(loaded) == ["validation"] and len(loaded["validation"].dataset) == 4
    assert loaded["validation"].where(1, 2) == f"{tmp_path / 'conll2003' / 'dev.txt'}:11"


def test_conll2003_offline_without_a_copy_lists_what_was_tried(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPCOURSE_DATA", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="data.data_dir: folder '.*mine' does not exist"):
        conll2003(data_dir=str(tmp_path / "mine")).load(["train"])  # an explicit folder must be there
    (tmp_path / "mine").mkdir()
    (tmp_path / "conll2003").mkdir()
    (tmp_path / "conll2003" / "train.txt").write_text("EU NNP B-NP B-ORG\n")
    with pytest.raises(DataError, match=r"data.data_dir: folder '.*mine' holds no files of dataset 'conll2003' "
                                        r"\(train: train.txt or "):  # never a fall-back to $DEEPCOURSE_DATA's copy
        conll2003(data_dir=str(tmp_path / "mine")).load(["train"])
    (tmp_path / "conll2003" / "train.txt").unlink()
    with pytest.raises(DataError) as error:
        conll2003().load(["train"])
    message = str(error.value)
    assert "no copy of dataset 'conll2003' found" in message and str(tmp_path / "conll2003") in message
    assert "eriktks/conll2003" in message and "offline" in message


def test_hub_copy_gets_string_tags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    names = {"pos_tags": ["NNP", "VBZ"], "chunk_tags": ["O", "B-NP"], "ner_tags": ["O", "B-ORG"]}
    features = datasets.Features({"id": datasets.Value("string"),
                                  "tokens": datasets.Sequence(datasets.Value("string")),
                                  **{k: datasets.Sequence(datasets.ClassLabel(names=v)) for k, v in names.items()}})
    hub = datasets.Dataset.from_dict({"id": ["0"], "tokens": [["EU", "rejects"]], "pos_tags": [[0, 1]],
                                      "chunk_tags": [[1, 0]], "ner_tags": [[1, 0]]}, features=features)
    calls = {}

    def fake_load(name, **kwargs):
        calls.update(kwargs, name=name)
        if kwargs["hub_id"] is None:
            raise DataError("no copy")
        return {"train": hub}

    monkeypatch.setattr(seq_datasets, "load_hf_splits", fake_load)
    monkeypatch.delenv("DEEPCOURSE_DATA", raising=False)
    loaded = conll2003(data_dir=str(tmp_path)).load(["train"])
    assert calls["hub_id"] == "eriktks/conll2003" and calls["revision"] == "refs/convert/parquet"
    assert loaded["train"].dataset[0] == {"token": ["EU", "rejects"], "pos": ["NNP", "VBZ"], "chunk": ["B-NP", "O"],
                                          "ner": ["B-ORG", "O"], "line": -1}
    assert loaded["train"].where(0, 1) == "eriktks/conll2003 (train split from the Hub), sentence 1, token 2"
    with pytest.raises(DataError):
        conll2003(columns=("token", "lemma"), data_dir=str(tmp_path)).load(["train"])
    assert calls["hub_id"] is None  # columns the Hub copy lacks: local copies only


def test_conll_files_relative_to_data_dir(mini: Path) -> None:
    corpus = conll(files={"train": "train.txt"}, data_dir=str(mini), columns=("token", "pos", "chunk", "ner"))
    loaded = corpus.load(["train", "validation", "test"])  # dev.txt and test.txt found by their usual names
    assert {k: len(v.dataset) for k, v in loaded.items()} == {"train": 16, "validation": 4, "test": 3}
    with pytest.raises(DataError, match=r"data.files.train: 'nope.txt' not found"):
        conll(files={"train": "nope.txt"}, data_dir=str(mini)).load(["train"])


def test_resolve_path_tries_cwd_data_dir_and_deepcourse_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "glove").mkdir()
    (tmp_path / "glove" / "v.txt").write_text("a 1\n")
    monkeypatch.setenv("DEEPCOURSE_DATA", str(tmp_path))
    assert resolve_path("glove/v.txt", None, "data.embeddings") == tmp_path / "glove" / "v.txt"
    assert resolve_path("$DEEPCOURSE_DATA/glove/v.txt", None, "data.embeddings") == tmp_path / "glove" / "v.txt"
    with pytest.raises(DataError, match=r"data.embeddings: file 'x.txt' not found; tried .*x.txt"):
        resolve_path("x.txt", str(tmp_path), "data.embeddings")


def hub_style_copy(root: Path) -> Path:
    """A folder laid out as the Hub's parquet export of eriktks/conll2003 (conll2003/<split>/0000.parquet, tags as
    ClassLabel ids): what `load_dataset(HUB_ID, revision=HUB_REVISION)` reads, without a network."""
    names = {"pos_tags": ["NNP", "VBD", "IN", "."], "chunk_tags": ["O", "B-NP", "B-VP", "B-PP"],
             "ner_tags": ["O", "B-PER", "I-PER", "B-LOC"]}
    features = datasets.Features({"id": datasets.Value("string"), "tokens": datasets.Sequence(datasets.Value("string")),
                                  **{k: datasets.Sequence(datasets.ClassLabel(names=v)) for k, v in names.items()}})
    rows = {"id": ["0", "1"], "tokens": [["Alice", "visited", "Paris", "."], ["Bob", "Smith", "slept", "."]],
            "pos_tags": [[0, 1, 0, 3], [0, 0, 1, 3]], "chunk_tags": [[1, 2, 1, 0], [1, 1, 2, 0]],
            "ner_tags": [[1, 0, 3, 0], [1, 2, 0, 0]]}
    for split in ("train", "validation", "test"):
        (root / "conll2003" / split).mkdir(parents=True)
        datasets.Dataset.from_dict(rows, features=features).to_parquet(root / "conll2003" / split / "0000.parquet")
    return root


def test_conll2003_from_a_hub_style_parquet_copy_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hub path with datasets >= 4 (no loading scripts): a run from the parquet export, tags turned back into
    strings, evaluated on its test split; a hub_id of your own must pin its revision."""
    from click.testing import CliRunner

    from deepcourse.testing import cli

    hub = hub_style_copy(tmp_path / "hub")
    for offline in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "DEEPCOURSE_OFFLINE"):
        monkeypatch.delenv(offline, raising=False)
    monkeypatch.setenv("DEEPCOURSE_DATA", str(tmp_path / "nothing_local"))
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"""name = "hub_conll2003"
[task]
name = "sequence-tagging"
[data]
name = "conll2003"
hub_id = "{hub}"
hub_revision = "refs/convert/parquet"
batch_size = 2
[model]
name = "lstm_tagger"
hidden_size = 8
word_dim = 8
[train]
max_steps = 2
progress = false
""")
    run = tmp_path / "run"
    out = CliRunner().invoke(cli, ["run", str(recipe), "--run-dir", str(run), "--no-report"])
    assert out.exit_code == 0, out.output
    artifacts = __import__("json").loads((run / "best" / "artifacts.json").read_text())
    assert {"O", "S-LOC", "B-PER", "E-PER"} <= set(artifacts["tags"]["ner"]) and "Paris" in artifacts["words"]["tokens"]
    out = CliRunner().invoke(cli, ["evaluate", str(run), "--split", "test", "--json"])
    assert out.exit_code == 0, out.output
    assert __import__("json").loads(out.stdout)["num_samples"] == 2
    unpinned = recipe.read_text().replace('hub_revision = "refs/convert/parquet"\n', "")
    recipe.write_text(unpinned)
    out = CliRunner().invoke(cli, ["run", str(recipe), "--run-dir", str(tmp_path / "run2")])
    assert out.exit_code == 2
    assert f"data.hub_revision: required to load '{hub}' from the Hugging Face Hub" in out.stderr
    assert not (tmp_path / "run2").exists()
