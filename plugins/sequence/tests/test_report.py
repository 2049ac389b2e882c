"""`deepcourse report` on tiny tagging runs: the per-type chart opens, the tables hold the numbers `evaluate` computes,
example sentences mark the mistakes; and the model zoo counts every tagger's FLOPs."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_end_to_end import cli, train  # the tiny run on the toy corpus, through the real CLI

from deepcourse.testing import cli as main
from deepcourse_sequence.report import choose_examples, render_spans, render_token_tags

REPO = Path(__file__).resolve().parents[3]  # the checkout: its docs/model-zoo.md


def png_size(path: Path) -> tuple[int, int]:
    import matplotlib.image as mpimg

    height, width = mpimg.imread(path).shape[:2]
    return width, height


def table(md: str, heading: str) -> dict[str, list[str]]:
    """The Markdown table under `## heading`: first cell -> the other cells."""
    section = md.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("|")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[2:]}


@pytest.fixture(scope="module")
def crf_run(tmp_path_factory: pytest.TempPathFactory, mini: Path) -> Path:
    """BiLSTM-CRF, 6 epochs on the toy corpus: some entities right, some wrong."""
    return train(tmp_path_factory.mktemp("runs"), mini, "train.epochs=6", "train.max_steps=24")


def test_report_command_draws_scores_per_type_and_marks_mistakes(crf_run: Path) -> None:
    shutil.rmtree(crf_run / "report")
    result = cli("report", crf_run)
    assert result.exit_code == 0, result.output
    md = (crf_run / "report" / "report.md").read_text()
    assert "![Scores per type (ner)](per_type_ner.png)" in md
    width, height = png_size(crf_run / "report" / "per_type_ner.png")
    assert 700 <= width <= 2000 and 350 <= height <= 900, (width, height)
    assert json.loads((crf_run / "best" / "metrics.json").read_text())["f1"] < 1, "the run should make mistakes"
    examples = table(md, "Example sentences (ner)")
    assert examples and all(row[2] for row in examples.values())  # sentence number -> gold, predicted, mistakes
    wrong = [row for row in examples.values() if row[2] != "none"]
    assert wrong and all("**[" in row[0] + row[1] for row in wrong)  # a missed or a wrong span, in bold
    assert re.search(r"\d+ (wrong|missed)", " ".join(row[2] for row in wrong))


def test_report_tables_hold_the_scores_evaluate_computes(crf_run: Path) -> None:
    result = cli("evaluate", crf_run, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    md = (crf_run / "report" / "report.md").read_text()
    rows = table(md, "Precision, recall and F1 per type (ner)")
    assert set(rows) == set(metrics["per_type"]) | {"**all**"}
    for type_, scores in metrics["per_type"].items():
        assert rows[type_] == [f"{scores['precision']:.4f}", f"{scores['recall']:.4f}", f"{scores['f1']:.4f}",
                               f"{scores['support']:,}"]
    support = sum(s["support"] for s in metrics["per_type"].values())
    assert rows["**all**"] == [f"{metrics['precision']:.4f}", f"{metrics['recall']:.4f}", f"{metrics['f1']:.4f}",
                               f"{support:,}"]


def test_multitask_softmax_tagger_reports_every_column(tmp_path: Path, mini: Path) -> None:
    run = train(tmp_path, mini, "model.name='lstm_tagger'", "task.labels=['ner', 'chunk', 'pos']")
    md = (run / "report" / "report.md").read_text()  # `run` writes the report at its end
    for file in ("per_type_ner.png", "per_type_chunk.png", "per_tag_pos.png"):
        assert f"]({file})" in md and png_size(run / "report" / file)[0] >= 600
    metrics = json.loads((run / "best" / "metrics.json").read_text())
    assert table(md, "Accuracy per gold tag (pos)")["**all**"][0] == f"{metrics['pos_accuracy']:.4f}"
    assert table(md, "Precision, recall and F1 per type (chunk)")["**all**"][2] == f"{metrics['chunk_f1']:.4f}"
    pos = table(md, "Example sentences (pos)")
    assert any("→" in row[0] and "**" in row[0] for row in pos.values())


def test_report_without_the_evaluation_data_still_has_the_curves(tmp_path: Path, mini: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(mini, data)
    run = train(tmp_path / "runs", data)
    (data / "dev.txt").unlink()
    result = CliRunner().invoke(main, ["report", str(run)])
    assert result.exit_code == 0, result.output
    md = (run / "report" / "report.md").read_text()
    assert "_No validation figures: data.files.validation: 'dev.txt' not found" in md and "](loss.png)" in md


def test_examples_are_mostly_mistakes_spread_through_the_split() -> None:
    mistakes = [0, 2, 0, 1, 0, 0, 3, 1, 0, 1, 1, 0]
    chosen = choose_examples(mistakes, [True] * 12, [10] * 12, k=4)
    assert chosen == sorted(chosen) and len(chosen) == 4 and sum(1 for i in chosen if mistakes[i]) == 3
    assert chosen == choose_examples(list(mistakes), [True] * 12, [10] * 12, k=4)  # deterministic
    assert choose_examples([0, 0], [False, False], [3, 3]) == []  # nothing worth showing
    assert choose_examples([1, 1, 1], [True] * 3, [50, 5, 60], k=1) == [1]  # a readable sentence first


def test_rendering_escapes_markdown_and_bolds_mistakes() -> None:
    tokens = ["Acme", "Corp", "|", "*hired*", "Carol"]
    gold = {("ORG", 0, 2), ("PER", 4, 5)}
    assert render_spans(tokens, gold, {("PER", 4, 5)}) == r"[ORG Acme Corp] \| \*hired\* **[PER Carol]**"
    assert render_token_tags(["Snow", "fell"], ["NN", "VBD"], ["NNP", "VBD"]) == "**Snow/NN→NNP** fell"


def test_model_zoo_lists_every_tagger_with_counted_flops() -> None:
    from deepcourse.api import MODELS, TASKS
    from deepcourse.testing import count_flops as _count_flops
    from deepcourse.testing import zoo_section

    section = zoo_section("sequence-tagging")
    committed = (REPO / "docs" / "model-zoo.md").read_text(encoding="utf-8")
    assert "\n".join(section) in committed, "docs/model-zoo.md is stale: python -m deepcourse.cli.docgen zoo > ..."
    rows = [line for line in section if line.startswith("| `")]
    assert {r.split("`")[1] for r in rows} >= {"rnn_tagger", "lstm_tagger", "gru_tagger", "bilstm_tagger",
                                                "bilstm_crf"}
    assert not any("n/a" in r for r in rows)
    task_cls = TASKS.get("sequence-tagging")
    task = task_cls()
    facts = dict(task_cls.example_facts)
    batch = task.setup_example(facts)
    model = MODELS.get("lstm_tagger")(**facts).eval()
    tokens, dim, hidden, tags = int(batch["lengths"][0]), facts["embeddings"].shape[1], 200, 17
    # four gates of input and recurrent products per token, then the tag projection; a multiply-add is 2 FLOPs
    assert _count_flops(task, model, batch) == 2 * tokens * (4 * hidden * (dim + hidden) + hidden * tags)
