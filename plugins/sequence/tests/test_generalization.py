"""What the tagger may use to do well on unseen text: the holdout of whole documents, word shapes, and <unk> for
words seen once."""
from __future__ import annotations

from pathlib import Path

import torch

from deepcourse.api import MODELS, build_task, call_builder, load_recipe, shipped_recipes
from deepcourse_sequence.batching import CASINGS, casing

DOCS = [  # three documents; the last one's words occur nowhere else
    [("Alice", "B-PER"), ("visited", "O"), ("Paris", "B-LOC"), (".", "O")],
    [("Bob", "B-PER"), ("visited", "O"), ("Rome", "B-LOC"), (".", "O")],
    [("Alice", "B-PER"), ("saw", "O"), ("Bob", "B-PER"), (".", "O")],
    [("Zanzibar", "B-LOC"), ("welcomed", "O"), ("Quentin", "B-PER"), (".", "O")],
    [("Quentin", "B-PER"), ("left", "O"), ("Zanzibar", "B-LOC"), (".", "O")],
]


def corpus(folder: Path) -> Path:
    """train.txt: documents of 2, 1 and 2 sentences; dev.txt: one sentence."""
    folder.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    for doc in ([DOCS[0], DOCS[1]], [DOCS[2]], [DOCS[3], DOCS[4]]):
        lines += ["-DOCSTART- O", ""]
        for sentence in doc:
            lines += [f"{w} {t}" for w, t in sentence] + [""]
    (folder / "train.txt").write_text("\n".join(lines), encoding="utf-8")
    (folder / "dev.txt").write_text("Alice O\nvisited O\nRome B-LOC\n", encoding="utf-8")
    return folder


def recipe_for(folder: Path, *overrides: str):  # type: ignore[no-untyped-def]
    return load_recipe(shipped_recipes()["conll_custom"], [f"data.data_dir='{folder}'", "data.columns=['token', 'ner']",
                                                          "data.files={train='train.txt', validation='dev.txt'}",
                                                          *overrides])


def test_the_holdout_is_the_last_whole_news_story_and_nothing_is_fitted_on_it(tmp_path: Path) -> None:
    folder = corpus(tmp_path / "docs")
    recipe = recipe_for(folder, "data.holdout=0.3")  # 30% of 5 sentences is 2: exactly the last document
    task = build_task(recipe)
    bundle = task.setup_data(recipe.data, splits=("train", "validation", "holdout"), seed=0)
    assert bundle.splits["holdout"].tokens == [[w for w, _ in DOCS[3]], [w for w, _ in DOCS[4]]]
    assert bundle.splits["train"].tokens == [[w for w, _ in s] for s in DOCS[:3]]
    assert "Zanzibar" not in task.words.stoi and "Quentin" not in task.words.stoi  # unseen, as test words are
    recipe = recipe_for(folder, "data.holdout=0.5")  # 3 sentences would split the last story: the cut moves back
    bundle = build_task(recipe).setup_data(recipe.data, splits=("holdout",), seed=0)
    assert len(bundle.splits["holdout"]) == 2


def test_word_shapes() -> None:
    shapes = {w: CASINGS[casing(w)] for w in ["1996", "12.5%", "paris", "NATO", "Paris", "B52", "x1Y", "--"]}
    assert shapes == {"1996": "numeric", "12.5%": "mainly_numeric", "paris": "all_lower", "NATO": "all_upper",
                      "Paris": "initial_upper", "B52": "mainly_numeric", "x1Y": "contains_digit",
                      "--": "other"}


def test_a_casing_embedding_sees_the_shape_of_every_token(tmp_path: Path) -> None:
    folder = corpus(tmp_path / "docs")
    recipe = recipe_for(folder, "model.casing_dim=4")
    task = build_task(recipe)
    bundle = task.setup_data(recipe.data, splits=("train",), seed=0)
    batch = bundle.splits["train"].__getitems__([0, 3])
    assert batch["casing"].tolist() == [[casing(w) for w, _ in DOCS[0]], [casing(w) for w, _ in DOCS[3]]]
    model = task.build_model(recipe.model, bundle.facts)
    assert model.casing_embedding.embedding_dim == 4
    assert model.encode(batch).shape[:2] == (2, 4)


def test_singleton_dropout_replaces_only_the_words_seen_once(tmp_path: Path) -> None:
    folder = corpus(tmp_path / "docs")
    recipe = recipe_for(folder, "model.singleton_dropout=0.999")
    task = build_task(recipe)
    bundle = task.setup_data(recipe.data, splits=("train",), seed=0)
    assert {task.words.itos[i] for i in bundle.facts["singletons"].tolist()} == {"Paris", "Rome", "saw",
                                                                                "welcomed", "left"}
    model = task.build_model(recipe.model, bundle.facts)
    seen: list[torch.Tensor] = []
    model.word_embedding.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    batch = bundle.splits["train"].__getitems__(list(range(len(bundle.splits["train"]))))
    torch.manual_seed(0)
    model.train()
    model.encode(batch)
    replaced = (seen[-1] == task.words.unk_index) & (batch["words"] != task.words.unk_index)
    singleton = torch.isin(batch["words"], bundle.facts["singletons"])
    assert torch.equal(replaced, singleton)  # with p = 0.999 every singleton, and nothing else
    model.eval()
    model.encode(batch)
    assert torch.equal(seen[-1], batch["words"])  # never at evaluation
    # a resumed run restores the same singletons from its artifacts
    restored = build_task(recipe)
    facts = restored.setup_data(recipe.data, splits=(), seed=0, artifacts=bundle.artifacts).facts
    assert torch.equal(facts["singletons"], bundle.facts["singletons"])


def test_the_new_options_are_off_by_default() -> None:
    facts = {"vocab_size": 10, "char_vocab_size": 5, "num_tags": {"ner": 3}, "padding_idx": 0, "unk_idx": 1}
    model = call_builder(MODELS.get("bilstm_crf"), {}, loc="model", provided=facts)
    assert model.casing_embedding is None and model.singleton_dropout == 0 and not model.is_singleton.any()
