"""A tiny `deepcourse run` on the toy corpus, then `evaluate` and `predict` on the run, through the real CLI."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from deepcourse.api import latest_checkpoint, shipped_recipes
from deepcourse.testing import cli as main
from deepcourse.testing import results_table

RECIPE = shipped_recipes()["conll_custom"]


def final_weights(run: Path) -> dict:
    """The weights in a run's latest checkpoint (to compare an interrupted run with an uninterrupted one)."""
    from safetensors.torch import load_file

    return load_file(str(latest_checkpoint(run / "checkpoints") / "model.safetensors"))


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def train(tmp: Path, mini: Path, *overrides: str) -> Path:
    sets = [f"data.data_dir='{mini}'", "train.max_steps=8", "train.epochs=2", "train.progress=false", *overrides]
    result = cli("run", RECIPE, "--runs-root", tmp, "--json", *[a for s in sets for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    return Path(json.loads(result.stdout[result.stdout.index("{"):])["run_dir"])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, mini: Path) -> Path:
    return train(tmp_path_factory.mktemp("runs"), mini)


def test_run_saves_everything_evaluate_needs(run_dir: Path) -> None:
    best = run_dir / "best"
    artifacts = json.loads((best / "artifacts.json").read_text())
    assert artifacts["tags"]["ner"][0] == "O" and "S-PER" in artifacts["tags"]["ner"]  # trained in BIOES
    assert "Alice" in artifacts["words"]["tokens"] and artifacts["kinds"] == {"ner": "span"}
    facts = json.loads((best / "facts.json").read_text())
    assert facts["num_tags"] == {"ner": len(artifacts["tags"]["ner"])} and facts["char_vocab_size"] > 10
    metrics = json.loads((best / "metrics.json").read_text())
    assert {"f1", "precision", "recall", "accuracy", "loss"} <= set(metrics)


def test_evaluate_with_a_folder_holding_only_the_test_file(run_dir: Path, mini: Path, tmp_path: Path) -> None:
    (tmp_path / "test.txt").write_text((mini / "test.txt").read_text())
    result = cli("evaluate", run_dir, "--split", "test", "--data-dir", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["num_samples"] == 3 and 0 <= metrics["f1"] <= 1
    assert set(metrics["per_type"]) <= {"LOC", "MISC", "ORG", "PER"}
    table = cli("evaluate", run_dir, "--split", "test", "--data-dir", tmp_path)
    assert "ner type" in table.stdout and "support" in table.stdout


def test_evaluate_reports_missing_split_files(run_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["evaluate", str(run_dir), "--split", "test", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and f"--data-dir {tmp_path}: the folder is empty" in result.stderr
    (tmp_path / "notes.txt").write_text("not a split")
    result = CliRunner().invoke(main, ["evaluate", str(run_dir), "--split", "test", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "no CoNLL file found for test" in result.stderr and str(tmp_path) in result.stderr


def test_predict_text_and_conll_file(run_dir: Path, mini: Path, tmp_path: Path) -> None:
    result = cli("predict", run_dir, "Alice visited Paris", "--json")
    assert result.exit_code == 0, result.output
    (first,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert first["tokens"] == ["Alice", "visited", "Paris"] and len(first["tags"]["ner"]) == 3
    assert all(t == "O" or t[:2] in ("B-", "I-") for t in first["tags"]["ner"])  # written in the files' scheme
    result = CliRunner().invoke(main, ["predict", str(run_dir), "Alice visited Paris", "", "--json"])
    assert result.exit_code == 2 and "predict: INPUTS[2] is empty text ('')" in result.stderr  # not an empty answer
    out = tmp_path / "tagged.conll"
    result = cli("predict", run_dir, mini / "dev.txt", "-o", out, "--batch-size", "3")
    assert result.exit_code == 0, result.output
    blocks = out.read_text().strip().split("\n\n")
    assert len(blocks) == 4 and blocks[0].splitlines()[0].split()[0] == "Alice"
    assert all(len(line.split()) == 2 for block in blocks for line in block.splitlines())


def test_predict_with_nothing_to_tag_exits_2_and_writes_nothing(run_dir: Path, tmp_path: Path) -> None:
    """A CoNLL file without a sentence gives no prediction: said so, exit 2, and no (empty) -o file left behind."""
    empty = tmp_path / "empty.conll"
    empty.write_text("-DOCSTART- -X- -X- O\n\n")
    out = tmp_path / "tagged.conll"
    result = CliRunner().invoke(main, ["predict", str(run_dir), str(empty), "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert f"predict: '{empty}' gave nothing to predict on" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.conll"]


def test_an_out_of_scheme_tag_never_turns_f1_into_accuracy(tmp_path: Path, mini: Path) -> None:
    """One `X-PER` in a NER column: with strict = false (conll2003's default) it used to make the column a token
    column, scored and selected on accuracy, exit 0. Now it is an error at its line; scoring the column by token
    accuracy is a choice the recipe makes (task.token_labels)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "dev.txt").write_text((mini / "dev.txt").read_text())
    train = (mini / "train.txt").read_text()
    (data / "train.txt").write_text(train.replace("Alice NNP B-NP B-PER", "Alice NNP B-NP X-PER"))
    args = ["run", RECIPE, "--runs-root", tmp_path / "runs", "--set", f"data.data_dir='{data}'", "--set",
            "data.strict=false", "--set", "train.max_steps=2", "--set", "train.progress=false", "--no-report"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert f"{data / 'train.txt'}:3: tag 'X-PER' in column 'ner' is not a span tag" in result.stderr
    chosen = cli(*args, "--set", "task.token_labels=['ner']", "--json")
    assert chosen.exit_code == 0, chosen.output
    summary = json.loads(chosen.stdout[chosen.stdout.index("{"):])
    assert summary["monitor"] == "accuracy" and "f1" not in summary["best"]


def test_multitask_run_reports_every_head(tmp_path: Path, mini: Path) -> None:
    run = train(tmp_path, mini, "task.labels=['ner', 'chunk', 'pos']", "model.head_decoders={pos='softmax'}",
                "task.loss_weights={pos=0.5}")
    metrics = json.loads((run / "best" / "metrics.json").read_text())
    assert {"ner_f1", "chunk_f1", "pos_accuracy", "ner_accuracy"} <= set(metrics)
    assert json.loads((run / "best" / "artifacts.json").read_text())["kinds"] == {
        "ner": "span", "chunk": "span", "pos": "token"}
    result = cli("predict", run, "Alice visited Paris", "--json")
    assert set(json.loads(result.stdout)["tags"]) == {"ner", "chunk", "pos"}
    rows = results_table([str(run)]).splitlines()[2:]  # the results page: one row per head, at the best evaluation
    summary = json.loads((run / "summary.json").read_text())["best"]
    assert [r.split(" | ")[4:6] for r in rows] == [
        [m, f"{summary[m] * 100:.2f}%"] for m in ("ner_f1", "chunk_f1", "pos_accuracy")]


def test_conll2003_local_copy_with_softmax_tagger(tmp_path: Path, mini: Path) -> None:
    data = tmp_path / "conll2003"
    data.mkdir()
    for name in ("train.txt", "dev.txt"):
        (data / name).write_text((mini / name).read_text())
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"""name = "tiny_conll2003"
requires_plugins = ["sequence"]
[task]
name = "sequence-tagging"
[data]
name = "conll2003"
data_dir = "{data}"
batch_size = 4
[model]
name = "lstm_tagger"
hidden_size = 8
word_dim = 8
[train]
max_steps = 3
progress = false
""")
    result = cli("run", recipe, "--runs-root", tmp_path / "runs", "--json")
    assert result.exit_code == 0, result.output
    run = Path(json.loads(result.stdout[result.stdout.index("{"):])["run_dir"])
    shutil.rmtree(data)  # evaluate and predict need none of the training data
    only_test = tmp_path / "only_test"
    only_test.mkdir()
    (only_test / "test.txt").write_text((mini / "test.txt").read_text())
    result = cli("evaluate", run, "--split", "test", "--data-dir", only_test, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["num_samples"] == 3
    result = cli("predict", run, "Alice visited Paris")
    assert result.exit_code == 0 and len(result.stdout.strip().splitlines()) == 3


def test_validation_carved_from_train_when_there_is_no_dev_file(tmp_path: Path, mini: Path) -> None:
    (tmp_path / "train.txt").write_text((mini / "train.txt").read_text())
    run = train(tmp_path / "runs", tmp_path, "data.files={train='train.txt'}", "data.val_split=0.25")
    assert json.loads((run / "best" / "metrics.json").read_text())["num_samples"] == 4  # 25% of 16 sentences


@pytest.mark.parametrize("override,message", [
    ("task.labels=['ner', 'lemma']", "task.labels[1]: column 'lemma' is not among data.columns"),
    ("data.vocab={min_freq=0}", "data.vocab.min_freq: input should be greater than or equal to 1"),
    ("data.scheme='IOB2'", "data.scheme: input should be 'IOB1', 'BIO' or 'BIOES'"),
    ("model.char_features='rnn'", "model.char_features: input should be 'none', 'cnn' or 'lstm'"),
    ("data.embeddings='nowhere/vectors.txt'", "data.embeddings: file 'nowhere/vectors.txt' not found; tried"),
    ("data.files={train='missing.txt'}", "data.files.train: 'missing.txt' not found (looked for"),
    ("task.loss_weights={lemma=1.0}", "task.loss_weights.lemma: not one of task.labels"),
])
def test_user_errors_name_the_key_and_exit_2(tmp_path: Path, mini: Path, override: str, message: str) -> None:
    result = CliRunner().invoke(main, ["run", str(RECIPE), "--runs-root", str(tmp_path), "--set",
                                       f"data.data_dir='{mini}'", "--set", override])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output


def test_strict_scheme_violation_names_file_and_line(tmp_path: Path, mini: Path) -> None:
    bad = (mini / "train.txt").read_text().replace("Paris NNP B-NP B-LOC", "Paris NNP B-NP I-LOC", 1)
    (tmp_path / "train.txt").write_text(bad)
    (tmp_path / "dev.txt").write_text((mini / "dev.txt").read_text())
    result = CliRunner().invoke(main, ["run", str(RECIPE), "--runs-root", str(tmp_path / "runs"), "--set",
                                       f"data.data_dir='{tmp_path}'"])
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'train.txt'}:5: tag 'I-LOC' cannot appear after 'O'" in result.stderr
    lenient = train(tmp_path / "runs", tmp_path, "data.strict=false")  # repaired as conlleval reads it
    assert (lenient / "best").is_dir()


def test_dev_tags_unseen_in_training_count_as_missed(tmp_path: Path, mini: Path) -> None:
    (tmp_path / "train.txt").write_text((mini / "train.txt").read_text())
    dev = (mini / "dev.txt").read_text().replace("Oslo NNP B-NP B-LOC", "Oslo NNP B-NP B-CITY")
    (tmp_path / "dev.txt").write_text(dev.replace("Snow NN B-NP O", "Snow XX B-NP O"))  # also a new POS tag
    run = train(tmp_path / "runs", tmp_path, "task.labels=['ner', 'pos']")
    metrics = json.loads((run / "best" / "metrics.json").read_text())
    assert metrics["ner_recall"] <= 6 / 7 and metrics["pos_accuracy"] < 1.0
    result = cli("evaluate", run, "--json")
    assert json.loads(result.stdout)["ner_per_type"]["CITY"]["recall"] == 0.0


def test_resume_continues_from_the_saved_vocabularies(tmp_path: Path, mini: Path, write) -> None:
    vectors = write(tmp_path / "vectors.txt", "alice 0.1 0.2 0.3\nparis 0.3 0.2 0.1\n")
    run = train(tmp_path / "runs", mini, f"data.embeddings='{vectors}'", "model.word_dim=3")  # 2 epochs of 4 steps
    checkpoints = sorted((run / "checkpoints").glob("step-*"))
    assert [c.name for c in checkpoints] == ["step-000000004", "step-000000008"]
    shutil.rmtree(checkpoints[-1])  # as if the run had been stopped after its first epoch
    vectors.unlink()  # resuming reads the run's own vocabularies and rebuilds the model without the vectors file
    result = cli("run", "--resume", run)
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and (run / "checkpoints" / "step-000000008").is_dir()


@pytest.mark.parametrize("chars", ["cnn", "lstm"])
def test_bf16_on_cpu_trains_lstm_taggers(tmp_path: Path, mini: Path, chars: str) -> None:
    """oneDNN has no bf16 LSTM on most CPUs: the recurrent layers run in float32 inside bf16 autocast."""
    run = train(tmp_path, mini, "train.mixed_precision='bf16'", f"model.char_features='{chars}'")
    metrics = json.loads((run / "best" / "metrics.json").read_text())
    assert 0.0 <= metrics["f1"] <= 1.0 and metrics["loss"] == metrics["loss"]  # finite, not NaN


def test_length_grouped_batches_resume_exactly(tmp_path: Path, mini: Path) -> None:
    """The grouped order depends only on (seed, epoch): a run resumed after its first epoch ends with the same
    weights as one that was never stopped."""
    whole = train(tmp_path / "whole", mini, "data.group_by_length=true")  # 2 epochs of 4 steps
    run = train(tmp_path / "runs", mini, "data.group_by_length=true")
    checkpoints = sorted((run / "checkpoints").glob("step-*"))
    shutil.rmtree(checkpoints[-1])
    result = cli("run", "--resume", run)
    assert result.exit_code == 0, result.output
    expected, got = final_weights(whole), final_weights(run)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
