"""Training and decoding speed of deepcourse's BiLSTM-CRF against a hand-written PyTorch loop of the same size.

Both sides train the same network (GloVe-sized word embeddings, character CNN 30 -> 50 filters, BiLSTM 100 per
direction, CRF from pytorch-crf, Adam, gradient clipping, batch 32) on CoNLL-2003 train, then decode train at the
evaluation batch size. The hand-written side is what one writes without a framework: per-sentence tensors, a
DataLoader collate that pads words and characters, a bidirectional LSTM and pytorch-crf's own loss and `decode`;
it runs twice, with a packed LSTM (correct) and on the padded batch (the quick script: faster on CPU, but the
backward direction then reads the padding first). The deepcourse side is the real engine (`deepcourse run` with
train.max_steps), with and without `data.group_by_length`, and the task's evaluation step. Rounds alternate
between the sides so the load of a shared machine hits them alike; medians over rounds are compared.

    pip install pytorch-crf                 # the hand-written side's CRF (deepcourse itself no longer needs it)
    export DEEPCOURSE_DATA=/path/to/data   # conll2003/train.txt and glove/
    python benchmarks/ner_speed.py --steps 150 --rounds 2
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence
from torchcrf import CRF

ROOT = Path(__file__).resolve().parents[1]


# -- the hand-written baseline ------------------------------------------------------------------------------------
def read_conll(path: Path) -> list[tuple[list[str], list[str]]]:
    sentences, tokens, tags = [], [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        tokens.append(fields[0])
        tags.append(fields[-1])
    if tokens:
        sentences.append((tokens, tags))
    return sentences


class HandTagger(nn.Module):
    def __init__(self, words: int, chars: int, tags: int, packed: bool, word_dim: int = 50, char_dim: int = 30,
                 filters: int = 50, hidden: int = 100, dropout: float = 0.5) -> None:
        super().__init__()
        self.packed = packed
        self.words = nn.Embedding(words, word_dim, padding_idx=0)
        self.chars = nn.Embedding(chars, char_dim, padding_idx=0)
        self.conv = nn.Conv1d(char_dim, filters, 3, padding=1)
        self.lstm = nn.LSTM(word_dim + filters, hidden, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(2 * hidden, tags)
        self.crf = CRF(tags, batch_first=True)

    def emissions(self, words: torch.Tensor, chars: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        b, t, length = chars.shape
        c = self.drop(self.chars(chars.view(b * t, length))).transpose(1, 2)
        c = self.conv(c).max(dim=2).values.view(b, t, -1)
        x = self.drop(torch.cat([self.words(words), c], dim=2))
        if self.packed:
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            h, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=t)
        else:
            h = self.lstm(x)[0]
        return self.proj(self.drop(h))


def hand_data(sentences: list[tuple[list[str], list[str]]],
              vectors: Path | None) -> tuple[list[tuple[torch.Tensor, ...]], dict]:
    word_ids = {"<pad>": 0, "<unk>": 1}
    if vectors is not None and vectors.is_file():  # the same vocabulary size as the recipe's (train + GloVe words)
        with gzip.open(vectors, "rt", encoding="utf-8") as f:
            for line in f:
                word_ids.setdefault(line.split(" ", 1)[0], len(word_ids))
    char_ids = {"<pad>": 0, "<unk>": 1}
    tag_ids: dict[str, int] = {}
    items = []
    for tokens, tags in sentences:
        w = torch.tensor([word_ids.setdefault(t.lower(), len(word_ids)) for t in tokens])
        c = [torch.tensor([char_ids.setdefault(ch, len(char_ids)) for ch in t]) for t in tokens]
        y = torch.tensor([tag_ids.setdefault(t, len(tag_ids)) for t in tags])
        items.append((w, c, y))
    return items, {"words": len(word_ids), "chars": len(char_ids), "tags": len(tag_ids)}


def collate(batch: list[tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]]) -> dict[str, torch.Tensor]:
    lengths = torch.tensor([len(w) for w, _, _ in batch])
    words = pad_sequence([w for w, _, _ in batch], batch_first=True)
    tags = pad_sequence([y for _, _, y in batch], batch_first=True)
    longest = max(len(c) for _, cs, _ in batch for c in cs)
    chars = torch.zeros(len(batch), int(lengths.max()), longest, dtype=torch.long)
    for i, (_, cs, _) in enumerate(batch):
        for j, c in enumerate(cs):
            chars[i, j, :len(c)] = c
    mask = torch.arange(words.shape[1]) < lengths.unsqueeze(1)
    return {"words": words, "chars": chars, "lengths": lengths, "tags": tags, "mask": mask}


def hand_train(items: list, sizes: dict, steps: int, batch_size: int, seed: int, packed: bool) -> float:
    """Seconds for `steps` training steps (data loading included), like the engine's epoch timer."""
    torch.manual_seed(seed)
    model = HandTagger(sizes["words"], sizes["chars"], sizes["tags"], packed)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.002)
    loader = torch.utils.data.DataLoader(items, batch_size=batch_size, shuffle=True, collate_fn=collate)
    model.train()
    start = time.perf_counter()
    done = 0
    while done < steps:
        for batch in loader:
            emissions = model.emissions(batch["words"], batch["chars"], batch["lengths"])
            loss = -model.crf(emissions, batch["tags"], batch["mask"], reduction="mean")
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done += 1
            if done == steps:
                break
    return time.perf_counter() - start


def hand_decode(items: list, sizes: dict, batch_size: int, packed: bool) -> float:
    model = HandTagger(sizes["words"], sizes["chars"], sizes["tags"], packed).eval()
    loader = torch.utils.data.DataLoader(items, batch_size=batch_size, collate_fn=collate)
    start = time.perf_counter()
    with torch.no_grad():
        for batch in loader:
            model.crf.decode(model.emissions(batch["words"], batch["chars"], batch["lengths"]), batch["mask"])
    return time.perf_counter() - start


# -- deepcourse -----------------------------------------------------------------------------------------------------
def deepcourse_train(recipe_path: Path, steps: int, threads: int, runs: Path, grouped: bool = False
                     ) -> tuple[float, int]:
    """Seconds of the engine's training loop for `steps` steps, read from the run's metrics log."""
    from deepcourse.recipe.load import load_recipe
    from deepcourse.training.loop import fit

    recipe = load_recipe(recipe_path, [f"train.max_steps={steps}", f"train.log_every={steps}", "train.progress=false",
                                       f"train.threads={threads}", "data.eval_samples=32", "data.holdout=0",
                                       f"data.group_by_length={str(grouped).lower()}"])
    summary = fit(recipe, runs_root=runs).summary
    events = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    epoch = next(e for e in events if e.get("scope") == "epoch" and e.get("split") == "train")
    return float(epoch["seconds"]), recipe.data.batch_size


def deepcourse_decode(recipe_path: Path, batch_size: int) -> tuple[float, float, int]:
    """Seconds to decode train with the task's evaluation step (model + Viterbi), and with the full evaluation
    (loss, decoding, entity F1) as `deepcourse evaluate` runs it."""
    from deepcourse.api import build_task, load_recipe
    from deepcourse.training.accelerator import make_accelerator
    from deepcourse.training.build import make_loader
    from deepcourse.training.evaluation import evaluation_loop

    recipe = load_recipe(recipe_path, ["data.holdout=0"])  # all of train, as the hand-written side decodes
    task = build_task(recipe)
    bundle = task.setup_data(recipe.data, splits=("train",), seed=recipe.seed)
    model = task.build_model(recipe.model, bundle.facts).eval()
    data = bundle.splits["train"]
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            model(data.__getitems__(range(i, min(i + batch_size, len(data)))), decode=True)
    decode_s = time.perf_counter() - start
    accelerator = make_accelerator(recipe)
    loader = accelerator.prepare(make_loader(data, batch_size, collate_fn=bundle.collate_fn, num_workers=0))
    start = time.perf_counter()
    evaluation_loop(accelerator, task, model, loader, sharded=True, progress=False)
    return decode_s, time.perf_counter() - start, len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "ner_bilstm_crf.toml")
    parser.add_argument("--steps", type=int, default=150, help="training steps timed per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--decode-batch", type=int, default=512)
    args = parser.parse_args()
    from deepcourse.api import load_plugins

    load_plugins()  # the recipes name the sequence plugin's task and model
    torch.set_num_threads(args.threads)
    root = Path(os.environ.get("DEEPCOURSE_DATA", ""))
    if not (root / "conll2003" / "train.txt").is_file():
        raise SystemExit(f"{root / 'conll2003' / 'train.txt'}: not found; set DEEPCOURSE_DATA to the folder "
                         f"holding conll2003/")
    items, sizes = hand_data(read_conll(root / "conll2003" / "train.txt"),
                             root / "glove" / "glove.6B.50d.conll2003.txt.gz")
    n = len(items)
    legs = ("hand packed", "hand padded", "deepcourse")
    rows: dict[str, list[float]] = {f"{leg} {what}": [] for what in ("train", "decode") for leg in legs}
    rows["deepcourse evaluate"] = []
    rows["deepcourse grouped train"] = []
    with tempfile.TemporaryDirectory() as runs:
        for round_ in range(args.rounds):
            for packed in (True, False):
                leg = "hand packed" if packed else "hand padded"
                rows[f"{leg} train"].append(args.steps * 32 / hand_train(items, sizes, args.steps, 32, round_, packed))
                rows[f"{leg} decode"].append(n / hand_decode(items, sizes, args.decode_batch, packed))
            seconds, batch = deepcourse_train(args.recipe, args.steps, args.threads, Path(runs))
            rows["deepcourse train"].append(args.steps * batch / seconds)
            seconds, batch = deepcourse_train(args.recipe, args.steps, args.threads, Path(runs), grouped=True)
            rows["deepcourse grouped train"].append(args.steps * batch / seconds)
            decode_s, evaluate_s, count = deepcourse_decode(args.recipe, args.decode_batch)
            rows["deepcourse decode"].append(count / decode_s)
            rows["deepcourse evaluate"].append(count / evaluate_s)
            torch.set_num_threads(args.threads)
            print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rows.items()) + " sentences/s",
                  flush=True)
    median = {k: statistics.median(v) for k, v in rows.items()}
    print(f"\nCoNLL-2003 train ({n:,} sentences), {args.steps} training steps of 32 per round, {args.rounds} rounds, "
          f"{args.threads} thread(s); medians in sentences/s")
    for key, value in median.items():
        print(f"  {key:<22} {value:>8,.0f}")
    for what in ("train", "decode"):
        ratios = "  ".join(f"vs {leg}: {median[f'deepcourse {what}'] / median[f'{leg} {what}']:.2f}"
                           for leg in legs[:2])
        print(f"  ratio {what:<6} deepcourse / hand-written  {ratios}")
    print(f"  ratio train  deepcourse with data.group_by_length / without  "
          f"{median['deepcourse grouped train'] / median['deepcourse train']:.2f}")
    print(f"  (deepcourse's full evaluation, with loss and entity F1: "
          f"{median['deepcourse evaluate'] / median['hand packed decode']:.2f} x the packed hand-written decode)")


if __name__ == "__main__":
    main()
