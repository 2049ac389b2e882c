"""Looking inside taggers on tiny toy-corpus runs: `explain` (transitions, marginals, n-best paths, saliency),
`predict --nbest`, `evaluate --write-predictions` in conlleval's format, and the report's entity-type confusion."""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
from test_end_to_end import cli, train  # the tiny run on the toy corpus, through the real CLI
from test_report import png_size, table

from deepcourse_sequence.report import MISSED, SPURIOUS, type_confusion

SENTENCES = ("Alice moved to Vienna .", "Acme Corp hired Carol in Berlin .")


@pytest.fixture(scope="module")
def crf_run(tmp_path_factory: pytest.TempPathFactory, mini: Path) -> Path:
    """BiLSTM-CRF, 6 epochs on the toy corpus: some entities right, some wrong."""
    return train(tmp_path_factory.mktemp("runs"), mini, "train.epochs=6", "train.max_steps=24")


def test_explain_shows_transitions_marginals_nbest_and_saliency(crf_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "explained"
    result = cli("explain", crf_run, *SENTENCES, "-o", out, "--nbest", "4", "--json")
    assert result.exit_code == 0, result.output
    model, *sentences = json.loads(result.stdout)["explanations"]
    tags = model["ner"]["tags"]
    assert tags[0] == "O" and len(model["ner"]["transitions"]) == len(tags)
    assert model["ner"]["forbidden_mean"] < model["ner"]["allowed_mean"]  # learnt, even in 24 steps: O -> I-X rare
    files = {"transitions_ner.png", "explain.md"}
    for index, (text, sentence) in enumerate(zip(SENTENCES, sentences), 1):
        predicted = json.loads(cli("predict", crf_run, text, "--json").stdout)
        ner = sentence["ner"]
        assert sentence["input"] == text and ner["tags"] == predicted["tags"]["ner"]
        assert [m["token"] for m in ner["marginals"]] == text.split()
        assert all(0 < m["probability"] <= 1 and m["next"]["probability"] <= 1 - m["probability"] + 1e-6
                   for m in ner["marginals"])
        probs = [p["probability"] for p in ner["nbest"]]
        assert len(probs) == 4 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert ner["nbest"][0]["tags"] == ner["tags"]  # path 1 is the Viterbi path predict gives
        assert len({tuple(p["model_tags"]) for p in ner["nbest"]}) == 4  # four different paths of the model's tags
        entities = predicted.get("entities", {}).get("ner", [])
        assert [s["entity"] for s in ner["saliency"]] == entities[:3]
        for j, s in enumerate(ner["saliency"], 1):
            assert len(s["attributions"]) == len(text.split()) and s["convergence_delta"] < 0.05
            assert 0 < s["probability"] <= 1
            files.add(f"{index:02d}_saliency_ner_{j}.png")
        files.add(f"{index:02d}_marginals_ner.png")
    assert {p.name for p in out.iterdir()} == files
    width, height = png_size(out / "transitions_ner.png")
    assert 600 <= width <= 1800 and 500 <= height <= 1500, (width, height)
    width, height = png_size(out / "02_marginals_ner.png")
    assert 600 <= width <= 1200 and 350 <= height <= 700, (width, height)
    md = (out / "explain.md").read_text()
    assert "## The CRF's transitions" in md and "moves the scheme forbids" in md
    assert md.count("**4 best tag sequences (ner)**") == 2
    assert "| rank | probability | entities (read as conlleval reads them) | differs from path 1 |" in md
    assert "| 1 | " in md and "(the best path)" in md


def test_the_target_chooses_the_entity_and_wrong_options_exit_2(crf_run: Path, tmp_path: Path) -> None:
    predicted = json.loads(cli("predict", crf_run, SENTENCES[1], "--json").stdout)
    entity = predicted["entities"]["ner"][-1]
    result = cli("explain", crf_run, SENTENCES[1], "-o", tmp_path / "a", "--target", entity["text"], "--json")
    assert result.exit_code == 0, result.output
    saliency = json.loads(result.stdout)["explanations"][1]["ner"]["saliency"]
    assert [s["entity"] for s in saliency] == [e for e in predicted["entities"]["ner"] if e["text"] == entity["text"]]
    result = cli("explain", crf_run, SENTENCES[1], "-o", tmp_path / "b", "--target", "NOWHERE")
    assert result.exit_code == 0 and "No saliency for ner: no predicted entity is 'NOWHERE'" in \
        (tmp_path / "b" / "explain.md").read_text()
    for args, message in ((["--layer", "encoder"], "--layer: does not apply to a tagger"),
                          (["--topk", "3"], "--topk: does not apply to a tagger")):
        result = cli("explain", crf_run, SENTENCES[0], "-o", tmp_path / "c", *args)
        assert result.exit_code == 2 and message in result.stderr
    assert not (tmp_path / "c").exists()


def test_predict_nbest_lists_the_best_paths(crf_run: Path, tmp_path: Path, mini: Path) -> None:
    result = cli("predict", crf_run, *SENTENCES, "--nbest", "3", "--json")
    assert result.exit_code == 0, result.output
    for line in result.stdout.splitlines():
        got = json.loads(line)
        paths = got["nbest"]["ner"]
        assert paths[0]["tags"] == got["tags"]["ner"] and len(paths) == 3
        assert [p["probability"] for p in paths] == sorted((p["probability"] for p in paths), reverse=True)
        assert paths[0]["entities"] == got.get("entities", {}).get("ner", [])
    out = tmp_path / "nbest.conll"
    result = cli("predict", crf_run, SENTENCES[0], "--nbest", "2", "-o", out)
    assert result.exit_code == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("# nbest ner: ") and len(lines[0].split()[3:]) == 2  # NCRF++'s layout
    assert [line.split()[0] for line in lines[1:6]] == SENTENCES[0].split() and len(lines[1].split()) == 3


@pytest.fixture()
def undecided_run(crf_run: Path, tmp_path: Path) -> Path:
    """crf_run with its NER head rewired: every emission 0, a start on B-PER, E-PER or S-PER, and O after any tag.
    Three BIOES paths tie (S-PER O..., B-PER O..., E-PER O...), two of them through moves BIOES forbids, and all
    three read B-PER O... in BIO: what `predict --nbest 3` printed as three identical columns at 0.33 each."""
    import torch
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(crf_run, run)
    weights = run / "best" / "model.safetensors"
    state = load_file(str(weights))
    tags = json.loads((run / "best" / "artifacts.json").read_text())["tags"]["ner"]
    for key in [k for k in state if k.startswith("heads.ner.") and ".crf." not in k]:
        state[key] = torch.zeros_like(state[key])
    start = torch.full((len(tags),), -10.0)
    start[[tags.index(t) for t in ("B-PER", "E-PER", "S-PER")]] = 10.0
    transitions = torch.full((len(tags), len(tags)), -5.0)
    transitions[:, tags.index("O")] = 5.0
    state["heads.ner.crf.start_transitions"], state["heads.ner.crf.transitions"] = start, transitions
    save_file(state, str(weights))
    return run


def test_predict_nbest_merges_paths_that_read_alike_in_the_output_scheme(undecided_run: Path, tmp_path: Path) -> None:
    result = cli("predict", undecided_run, SENTENCES[0], "--nbest", "3", "--json")
    assert result.exit_code == 0, result.output
    paths = json.loads(result.stdout)["nbest"]["ner"]
    columns = [tuple(p["tags"]) for p in paths]
    assert len(set(columns)) == 3, columns  # three different answers, as the output writes them
    first = paths[0]
    assert first["tags"] == ["B-PER", "O", "O", "O", "O"] and first["paths"] == 3  # the three tied BIOES paths
    assert first["probability"] == pytest.approx(0.998, abs=1e-3)  # their sum, not one third of it
    assert [p["probability"] for p in paths] == sorted((p["probability"] for p in paths), reverse=True)
    assert sum(p["probability"] for p in paths) <= 1 + 1e-6
    result = cli("predict", undecided_run, SENTENCES[0], "--nbest", "3", "-o", tmp_path / "nbest.conll")
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "nbest.conll").read_text().splitlines()
    assert lines[0].startswith("# nbest ner: 0.99")
    assert lines[1].startswith("# merged ner: answer 1 sums 3 BIOES paths") and lines[1].endswith(
        "that read alike in BIO")
    assert lines[2].split() == ["Alice", "B-PER", *lines[2].split()[2:]] and len(lines[2].split()) == 4


def test_predict_refuses_empty_text_and_an_nbest_beyond_its_bound(crf_run: Path) -> None:
    import deepcourse
    from deepcourse.api import UserError

    for text in ("", "  \t "):
        result = cli("predict", crf_run, SENTENCES[0], text)
        assert result.exit_code == 2 and f"predict: INPUTS[2] is empty text ({text!r})" in result.stderr
        with pytest.raises(UserError, match=re.escape(f"input {text!r} is empty text: a tagger tags at least one")):
            deepcourse.predict(crf_run, [SENTENCES[0], text])  # from Python too: never an empty answer
    result = cli("predict", crf_run, SENTENCES[0], "--nbest", "100000000")
    assert result.exit_code == 2 and "--nbest 100000000: at most 100 answers per input" in result.stderr
    result = cli("explain", crf_run, SENTENCES[0], "--nbest", "101", "-o", crf_run.parent / "x")
    assert result.exit_code == 2 and "--nbest 101: at most 100" in result.stderr


def test_evaluate_writes_what_conlleval_reads_and_scores_the_same(crf_run: Path, tmp_path: Path) -> None:
    from seqeval.metrics import f1_score

    out = tmp_path / "dev.conll"
    result = cli("evaluate", crf_run, "--json", "--write-predictions", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    blocks = out.read_text().rstrip("\n").split("\n\n")
    assert len(blocks) == metrics["num_samples"]
    gold, pred = [], []
    for block in blocks:
        rows = [line.split() for line in block.splitlines()]
        assert all(len(r) == 3 for r in rows)  # token, gold, predicted: conlleval's last two columns
        gold.append([r[1] for r in rows])
        pred.append([r[2] for r in rows])
    assert all(t == "O" or t[:2] in ("B-", "I-") for s in gold + pred for t in s)  # BIO, as the F1 is scored
    assert f1_score(gold, pred) == pytest.approx(metrics["f1"])  # seqeval's default mode is conlleval's


def test_report_tabulates_gold_type_against_predicted_type(crf_run: Path) -> None:
    result = cli("report", crf_run)
    assert result.exit_code == 0, result.output
    md = (crf_run / "report" / "report.md").read_text()
    assert "![Type confusion (ner)](type_confusion_ner.png)" in md
    width, height = png_size(crf_run / "report" / "type_confusion_ner.png")
    assert 400 <= width <= 1500 and 300 <= height <= 1200, (width, height)
    confusion = table(md, "Gold type against predicted type (ner)")
    scores = table(md, "Precision, recall and F1 per type (ner)")
    types = [t for t in scores if t != "**all**"]
    header = md.split("## Gold type against predicted type (ner)\n", 1)[1].lstrip("\n").splitlines()[0]
    columns = [c.strip() for c in header.strip("|").split("|")][1:]
    assert columns[-1] == "(missed)" and set(columns[:-1]) >= set(types)
    for t in types:  # every gold span of a type is in its row: given some type, or missed
        row = confusion[f"**{t}**"]
        assert sum(int(v.replace(",", "") or 0) for v in row) == int(scores[t][3].replace(",", ""))


def test_type_confusion_counts_right_wrong_missed_and_spurious() -> None:
    gold = [{("PER", 0, 1), ("LOC", 3, 4)}, {("ORG", 0, 2)}]
    pred = [{("PER", 0, 1), ("ORG", 3, 4), ("MISC", 5, 6)}, {("ORG", 0, 1)}]  # a wrong type, a spurious, a boundary
    types, counts = type_confusion(gold, pred)
    assert types == ["LOC", "MISC", "ORG", "PER"]
    assert counts == {("PER", "PER"): 1, ("LOC", "ORG"): 1, (SPURIOUS, "MISC"): 1, ("ORG", MISSED): 1,
                      (SPURIOUS, "ORG"): 1}


def test_a_softmax_tagger_explains_without_transitions(tmp_path: Path, mini: Path) -> None:
    run = train(tmp_path, mini, "model.name='bilstm_tagger'")
    result = cli("explain", run, SENTENCES[0], "-o", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    ner = json.loads(result.stdout)["explanations"][1]["ner"]
    best = [p["probability"] for p in ner["nbest"]]
    product = math.prod(m["probability"] for m in ner["marginals"])  # independent tokens: a path's probability is
    assert best[0] == pytest.approx(product, rel=1e-4)                # the product of its tags' probabilities
    assert "has no transition scores" in (tmp_path / "out" / "explain.md").read_text()
    assert not (tmp_path / "out" / "transitions_ner.png").exists()
