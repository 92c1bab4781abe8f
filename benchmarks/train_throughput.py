"""Training throughput (images/s) of going_modular's ViT against timm's VisionTransformer.

Both models get the same configuration (the digits set-up of the training chapter and of the
command line's default ``Micro`` variant: 8x8 grey images, P = 2, D = 64, 4 blocks, 8 heads, MLP
ratio 2, 10 classes), the same AdamW optimiser, gradient
clipping at norm 1 and the same batches. One step is forward, loss, backward, clip and update.
The two models are timed in alternating rounds so that a change in machine load hits both; the
median round of each is reported, with the ratio going_modular / timm (above 1: going_modular is faster).

    HF_HUB_OFFLINE=1 python benchmarks/train_throughput.py [--batch-size 64] [--steps 20] [--rounds 5]
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402 (after the environment is set)
from timm.models.vision_transformer import VisionTransformer  # noqa: E402
from torch import nn  # noqa: E402

from going_modular.data import create_dataloaders, load_digits_data  # noqa: E402
from going_modular.engine import build_optimizer  # noqa: E402
from going_modular.variants import VIT_VARIANTS  # noqa: E402
from going_modular.vit import ViT  # noqa: E402

CONFIG = dict(img_size=8, patch_size=2, num_classes=10, **VIT_VARIANTS["Micro"])


def batches(batch_size: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` training batches of digits, (B, 1, 8, 8) images and (B,) labels, cycled if needed."""
    loader, _ = create_dataloaders(
        load_digits_data(seed=0), batch_size=batch_size, seed=0
    )
    full = [(x, y) for x, y in loader if len(y) == batch_size]
    return [full[i % len(full)] for i in range(count)]


def round_seconds(
    model: nn.Module, optimizer: torch.optim.Optimizer, data: list
) -> float:
    """Seconds for one training step on each batch of ``data``."""
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    start = time.perf_counter()
    for images, labels in data:
        loss = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--steps", type=int, default=20, help="training steps per timed round"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="timed rounds per model (median reported)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: PyTorch's choice)",
    )
    args = parser.parse_args(argv)
    if min(args.batch_size, args.steps, args.rounds) < 1:
        parser.error("--batch-size, --steps and --rounds must be positive")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    models = {
        "going_modular": ViT(in_channels=1, **CONFIG),
        "timm": VisionTransformer(in_chans=1, **CONFIG),
    }
    counts = {
        name: sum(p.numel() for p in model.parameters())
        for name, model in models.items()
    }
    if len(set(counts.values())) != 1:
        raise SystemExit(f"the two models differ in size: {counts}")
    optimizers = {
        name: build_optimizer(model, lr=1e-3, weight_decay=0.05)
        for name, model in models.items()
    }
    data = batches(args.batch_size, args.steps)
    for name in models:  # warm-up: allocator, kernels, optimiser state
        round_seconds(models[name], optimizers[name], data[:3])

    seconds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name in models:
            seconds[name].append(round_seconds(models[name], optimizers[name], data))
    rate = {
        name: args.batch_size * args.steps / statistics.median(values)
        for name, values in seconds.items()
    }

    print(
        f"config: {CONFIG} | {counts['timm']:,} parameters | batch {args.batch_size} | "
        f"{args.steps} steps x {args.rounds} rounds | {torch.get_num_threads()} threads | torch {torch.__version__}"
    )
    for name in models:
        print(
            f"{name:>14}: {rate[name]:8.0f} images/s (median round {statistics.median(seconds[name]):.3f} s)"
        )
    print(f"ratio going_modular / timm: {rate['going_modular'] / rate['timm']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
