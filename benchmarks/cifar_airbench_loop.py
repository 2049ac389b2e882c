"""The airbench94 method (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024) as one hand-written
file, for CPUs (channels_last; bf16 autocast where the CPU trains the net faster in it, as deepcourse's precision
"auto" chooses; `benchmarks/cifar_speed.py` gives it the run's precision): the reference that deepcourse's fast CIFAR
recipes are measured against (same net, same schedule, same data), side by side in one command.

The method: a three-stage conv net (widths 64/256/256, GELU, batch norm without a learned scale) after a 2x2
patch-whitening convolution initialised from the data (eigenvectors of the patch covariance, frozen weights, bias
trained for the first three epochs); Nesterov SGD at batch 1024 with decoupled learning rate and weight decay and a
64x rate for batch-norm biases; label smoothing 0.2 on a summed loss; a triangular schedule; Lookahead weight
averaging every 5 steps; alternating (derandomised) flips and 2-pixel translations; multi-crop test-time
augmentation (flip + two 1-pixel shifts).

    python benchmarks/cifar_airbench_loop.py --seed 0 --out /tmp/airbench.json    # DEEPCOURSE_DATA must be set

It trains on 45,000 of CIFAR-10's training images and reports accuracy on the other 5,000 (never selected on), after
every epoch, with the training time so far (evaluation not counted, nor the whitening's initialisation, which
deepcourse does while building the run). The split is deepcourse's own `data.val_split = 0.1` for the same seed
(`deepcourse.api.split_indices`), and the whitening is computed from the same 5,000 training images the engine's
data-dependent initialization draws, so `benchmarks/cifar_speed.py` compares the two on the same data.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HYP: dict[str, Any] = {
       "epochs": 9.9, "batch_size": 1024, "lr": 11.5, "momentum": 0.85, "weight_decay": 0.0153, "bias_scaler": 64.0,
       "label_smoothing": 0.2, "whiten_bias_epochs": 3, "translate": 2, "widths": (64, 256, 256),
       "bn_momentum": 0.6, "scaling_factor": 1 / 9, "tta_level": 2, "lookahead_every": 5}
MEAN = torch.tensor((0.4914, 0.4822, 0.4465))
STD = torch.tensor((0.2470, 0.2435, 0.2616))


# -- data ---------------------------------------------------------------------------------------------------------
def load_cifar(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """All 50,000 training images as uint8 N x 3 x 32 x 32 and their labels, decoded once from the Parquet shards."""
    import pyarrow.parquet as pq
    from PIL import Image

    images, labels = [], []
    for shard in sorted((root / "cifar10").glob("train-*.parquet")):
        table = pq.read_table(shard).to_pydict()
        key = "img" if "img" in table else "image"
        for cell, label in zip(table[key], table["label"]):
            images.append(np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB")))
            labels.append(label)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels)


def split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) indices: deepcourse's `data.val_split` for this seed, as a recipe's run carves them."""
    from deepcourse.api import split_indices

    return split_indices(n, fraction, seed)


def init_sample(n: int, size: int, seed: int) -> torch.Tensor:
    """The training images the whitening is computed from: those deepcourse's data-dependent init draws."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def normalise(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() / 255) - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1)


def batch_flip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def batch_translate(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Each image shifted by up to `pad` pixels each way (reflect padding, then a random crop), batched."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad,) * 4, mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    return out.gather(3, cols)


# -- the net ------------------------------------------------------------------------------------------------------
class BatchNorm(nn.BatchNorm2d):
    def __init__(self, width: int, momentum: float) -> None:
        super().__init__(width, eps=1e-12, momentum=1 - momentum)
        self.weight.requires_grad = False  # no learned scale: the next conv has one


class Conv(nn.Conv2d):
    def __init__(self, cin: int, cout: int, kernel_size: int = 3, padding: str | int = "same",
                 bias: bool = False) -> None:
        super().__init__(cin, cout, kernel_size, padding=padding, bias=bias)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.bias is not None:
            self.bias.data.zero_()
        torch.nn.init.dirac_(self.weight.data[:self.weight.size(1)])  # starts near the identity: trains fast


class ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int, momentum: float) -> None:
        super().__init__()
        self.conv1, self.pool, self.norm1 = Conv(cin, cout), nn.MaxPool2d(2), BatchNorm(cout, momentum)
        self.conv2, self.norm2, self.activ = Conv(cout, cout), BatchNorm(cout, momentum), nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class Mul(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def make_net(widths: tuple[int, int, int], momentum: float, scale: float) -> nn.Sequential:
    whiten_width = 2 * 3 * 2 ** 2
    net = nn.Sequential(Conv(3, whiten_width, kernel_size=2, padding=0, bias=True), nn.GELU(),
                        ConvGroup(whiten_width, widths[0], momentum), ConvGroup(widths[0], widths[1], momentum),
                        ConvGroup(widths[1], widths[2], momentum), nn.MaxPool2d(3), nn.Flatten(),
                        nn.Linear(widths[2], 10, bias=False), Mul(scale))
    net[0].weight.requires_grad = False
    return net


def init_whitening(layer: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4) -> None:
    """The first layer's filters: the patch covariance's eigenvectors scaled by 1/sqrt(eigenvalue), and their
    negatives (so GELU passes both signs)."""
    h, w = layer.weight.shape[2:]
    c = images.shape[1]
    patches = images.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w).float()
    flat = patches.view(len(patches), -1)
    cov = flat.T @ flat / len(flat)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov, UPLO="U")
    filters = eigenvectors.T.reshape(c * h * w, c, h, w).flip(0)  # the largest eigenvalue's first
    scaled = filters / torch.sqrt(eigenvalues.flip(0).view(-1, 1, 1, 1) + eps)
    layer.weight.data[:] = torch.cat((scaled, -scaled))


class Lookahead:
    """An exponential average of the weights that the net is pulled back onto every few steps."""

    def __init__(self, net: nn.Module) -> None:
        self.ema = {k: v.clone() for k, v in net.state_dict().items()}

    def update(self, net: nn.Module, decay: float) -> None:
        for ema, param in zip(self.ema.values(), net.state_dict().values()):
            if param.dtype.is_floating_point:
                ema.lerp_(param, 1 - decay)
                param.copy_(ema)


# -- precision ----------------------------------------------------------------------------------------------------
def bf16_is_faster(memory: torch.memory_format) -> bool:
    """Does this CPU train the net faster in bf16 autocast than in float32? With AMX, yes. Elsewhere it depends on
    the CPU (AVX-512 BF16 is twice as fast as float32 on some, slower on others; emulated bf16 is slower), so
    measure: the fastest of three training steps on 256 random images in each precision, alternating, after one
    warm-up step each, and bf16 where it is at least 1.15x faster (deepcourse's rule)."""
    if torch.cpu._is_amx_tile_supported():
        return True
    if not torch.cpu._is_avx512_bf16_supported():
        return False
    with torch.random.fork_rng(devices=[]):
        net = make_net(HYP["widths"], HYP["bn_momentum"], HYP["scaling_factor"]).to(memory_format=memory)
        x = torch.randn(256, 3, 32, 32).contiguous(memory_format=memory)
    fastest = {False: math.inf, True: math.inf}
    for round_ in range(4):
        for bf16 in (False, True):
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = net(x).float().logsumexp(1).mean()
            loss.backward()
            if round_:
                fastest[bf16] = min(fastest[bf16], time.perf_counter() - started)
    return fastest[False] / fastest[True] >= 1.15


# -- training -----------------------------------------------------------------------------------------------------
def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: dict[str, Any], tta_level: int,
             memory: torch.memory_format) -> float:
    net.eval()
    correct = 0
    with torch.no_grad(), torch.autocast(**autocast):
        for i in range(0, len(x), 2000):
            inputs = normalise(x[i:i + 2000]).contiguous(memory_format=memory)

            def mirror(t: torch.Tensor) -> torch.Tensor:
                return 0.5 * net(t) + 0.5 * net(t.flip(-1)) if tta_level >= 1 else net(t)

            logits = mirror(inputs)
            if tta_level >= 2:
                padded = F.pad(inputs, (1,) * 4, mode="reflect")
                shifted = 0.5 * mirror(padded[:, :, 0:32, 0:32]) + 0.5 * mirror(padded[:, :, 2:34, 2:34])
                logits = 0.5 * logits + 0.5 * shifted
            correct += int((logits.argmax(1) == y[i:i + 2000]).sum())
    net.train()
    return correct / len(x)


def train(x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor, seed: int, epochs: float,
          precision: str, log: list[dict[str, Any]]) -> float:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    bs, momentum = HYP["batch_size"], HYP["momentum"]
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    lr, wd = HYP["lr"] / kilostep, HYP["weight_decay"] * bs / kilostep
    lr_biases = lr * HYP["bias_scaler"]
    memory = torch.channels_last  # on a CPU faster in either precision (oneDNN's layout)
    autocast: dict[str, Any] = {"device_type": "cpu", "dtype": torch.bfloat16, "enabled": precision == "bf16"}

    net = make_net(HYP["widths"], HYP["bn_momentum"], HYP["scaling_factor"]).to(memory_format=memory)
    norm_biases = [p for n, p in net.named_parameters() if "norm" in n and p.requires_grad]
    others = [p for n, p in net.named_parameters() if "norm" not in n and p.requires_grad]
    opt = torch.optim.SGD([{"params": norm_biases, "lr": lr_biases, "weight_decay": wd / lr_biases},
                           {"params": others, "lr": lr, "weight_decay": wd / lr}],
                          momentum=momentum, nesterov=True)
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]
    steps_per_epoch = math.ceil(len(x) / bs)
    total = math.ceil(epochs * steps_per_epoch)
    warmup = int(total * 0.23)

    def schedule(step: int) -> float:
        if step < warmup:
            return 0.2 * (1 - step / warmup) + 1.0 * (step / warmup)
        frac = (step - warmup) / max(total - warmup, 1)
        return 1.0 * (1 - frac) + 0.07 * frac

    alpha = 0.95 ** HYP["lookahead_every"] * (torch.arange(total + 1) / total) ** 3
    init_whitening(net[0], normalise(x[init_sample(len(x), 5000, seed)]))
    lookahead = Lookahead(net)
    started = time.perf_counter()
    step, trained_s = 0, 0.0
    flips_prev = torch.rand(len(x), generator=g) < 0.5
    for epoch in range(math.ceil(epochs)):
        net[0].bias.requires_grad = epoch < HYP["whiten_bias_epochs"]
        flips = flips_prev if epoch == 0 else ~flips_prev  # alternate: each image flipped every other epoch
        flips_prev = flips
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), bs):
            if step >= total:
                break
            idx = order[i:i + bs]
            inputs = batch_translate(batch_flip(normalise(x[idx]), flips[idx]), HYP["translate"], g)
            inputs = inputs.contiguous(memory_format=memory)
            with torch.autocast(**autocast):
                logits = net(inputs)
                loss = F.cross_entropy(logits.float(), y[idx], label_smoothing=HYP["label_smoothing"],
                                       reduction="sum")
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * schedule(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % HYP["lookahead_every"] == 0:
                lookahead.update(net, decay=float(alpha[step]))
        if step >= total:
            lookahead.update(net, decay=1.0)  # the averaged weights are the result
        trained_s = time.perf_counter() - started
        acc = evaluate(net, xv, yv, autocast, HYP["tta_level"], memory)
        log.append({"epoch": epoch + 1, "step": step, "train_s": round(trained_s, 2), "accuracy": acc})
        print(json.dumps(log[-1]), flush=True)
        started = time.perf_counter() - trained_s  # the evaluation is not training time
    return log[-1]["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=float, default=HYP["epochs"])
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images only (smoke runs)")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N held-out images only")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.precision == "auto":
        precision = "bf16" if bf16_is_faster(torch.channels_last) else "fp32"
    else:
        precision = args.precision
    images, labels = load_cifar(Path(os.environ["DEEPCOURSE_DATA"]))
    train_idx, held_idx = split(len(images), 0.1, args.seed)
    if args.limit:
        train_idx = train_idx[:args.limit]
    if args.eval_limit:
        held_idx = held_idx[:args.eval_limit]
    log: list[dict[str, Any]] = []
    accuracy = train(images[train_idx], labels[train_idx], images[held_idx], labels[held_idx], args.seed,
                     args.epochs, precision, log)
    result = {"method": "airbench94 (hand-written)", "seed": args.seed, "precision": precision,
              "threads": torch.get_num_threads(), "held_out": len(held_idx), "trained_on": len(train_idx),
              "accuracy": accuracy, "epochs": log}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "epochs"}))


if __name__ == "__main__":
    main()
