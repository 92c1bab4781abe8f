"""Images per second of going_modular's ViT, torchvision's and timm's, same configuration, weights and inputs.

For each variant (default Ti/16 and B/16 at 224 pixels) it times inference (forward passes under
``torch.inference_mode``) and a full training step (forward, cross-entropy, backward, AdamW step),
with the three implementations interleaved round by round so that a change in the machine's load
hits all of them, and each round started by another one: the first model to run after another has
run is slower (the memory the other freed must be mapped again), by a few per cent on ViT-B/16.
Each row reports the median round's images per second, the median over rounds of the ratio of
ours to the fastest of the other two in that round, and our achieved FLOP/s against the float32
matrix-multiply throughput of this machine measured in the same rounds (a 2048 x 2048 product).
The forward pass counts 2 FLOPs per multiply-accumulate (ViT-B/16: 17.58 GMACs per image); a
training step counts three forward passes' worth. On CUDA it adds bf16 autocast and
torch.compile rows.

On Linux the script first keeps freed memory in glibc's heap (``timing.pin_malloc``;
``--no-pin-malloc`` leaves malloc as it is): otherwise the three implementations, which run
the same ops, differ mostly by the page faults that the heap's layout happens to give each
of them (0 to 20 % of a forward pass).

    HF_HUB_OFFLINE=1 python benchmarks/speed.py                       # the CPU table of book/speed.md
    HF_HUB_OFFLINE=1 python benchmarks/speed.py --markdown book/_generated/speed_cpu.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm  # noqa: E402 (after the environment is set)
import torch  # noqa: E402
import torchvision  # noqa: E402
from timing import pin_malloc  # noqa: E402
from timm.models.vision_transformer import VisionTransformer as TimmViT  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT  # noqa: E402

from going_modular.engine import build_optimizer  # noqa: E402
from going_modular.files import atomic_write  # noqa: E402
from going_modular.porting import to_timm_state_dict, to_torchvision_state_dict  # noqa: E402
from going_modular.variants import count_macs, create_vit  # noqa: E402

IMPLEMENTATIONS = ("going_modular", "torchvision", "timm")


def build(variant: str, image_size: int, device: torch.device) -> dict[str, nn.Module]:
    """The three implementations of ``variant``, with going_modular's random weights copied into the others."""
    torch.manual_seed(0)
    ours = create_vit(variant, img_size=image_size, num_classes=1000)
    with (
        torch.no_grad()
    ):  # the head and class token start at zero: give every weight some noise
        for parameter in ours.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    c = ours.config
    theirs = TorchvisionViT(
        image_size=image_size, patch_size=c.patch_size, num_layers=c.depth, num_heads=c.num_heads,
        hidden_dim=c.embed_dim, mlp_dim=c.mlp_dim, num_classes=1000,
    )  # fmt: skip
    theirs.load_state_dict(to_torchvision_state_dict(ours))
    timm_model = TimmViT(
        img_size=image_size, patch_size=c.patch_size, embed_dim=c.embed_dim, depth=c.depth,
        num_heads=c.num_heads, mlp_ratio=c.mlp_ratio, num_classes=1000,
    )  # fmt: skip
    timm_model.load_state_dict(to_timm_state_dict(ours))
    models = {"going_modular": ours, "torchvision": theirs, "timm": timm_model}
    counts = {
        name: sum(p.numel() for p in model.parameters())
        for name, model in models.items()
    }
    if len(set(counts.values())) != 1:
        raise SystemExit(f"the three {variant} models differ in size: {counts}")
    return {name: model.to(device) for name, model in models.items()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def inference_step(
    model: nn.Module, images: torch.Tensor, amp: torch.dtype | None
) -> Callable[[], None]:
    model.eval()

    def step() -> None:
        with (
            torch.inference_mode(),
            torch.autocast(images.device.type, dtype=amp, enabled=amp is not None),
        ):
            model(images)

    return step


def training_step(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    amp: torch.dtype | None,
) -> Callable[[], None]:
    optimizer = build_optimizer(
        model, lr=1e-4, weight_decay=0.05
    )  # AdamW, as engine.train uses
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        model.train()
        with torch.autocast(images.device.type, dtype=amp, enabled=amp is not None):
            loss = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def timed(step: Callable[[], None], repeats: int, device: torch.device) -> float:
    """Seconds for ``repeats`` calls of ``step``."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    synchronize(device)
    return time.perf_counter() - start


def matmul_flops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """float32 FLOP/s of an n x n matrix product on ``device`` (2 n^3 FLOPs per product)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    return 2 * n**3 * repeats / timed(lambda: torch.mm(a, b), repeats, device)


def measure(
    variant: str, mode: str, *, image_size: int, batch: int, seconds: float, rounds: int, device: torch.device,
    amp: torch.dtype | None = None, compile_models: bool = False,
) -> dict:  # fmt: skip
    """One row: the median images/s of each implementation (rounds of about ``seconds`` each), with the
    matmul throughput measured in the same rounds."""
    models = build(variant, image_size, device)
    forward_flops = 2 * count_macs(models["going_modular"].config)
    if compile_models:
        models = {name: torch.compile(model) for name, model in models.items()}
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, image_size, image_size, generator=generator).to(
        device
    )
    labels = torch.randint(0, 1000, (batch,), generator=generator).to(device)
    steps = {
        name: inference_step(model, images, amp)
        if mode == "inference"
        else training_step(model, images, labels, amp)
        for name, model in models.items()
    }
    for (
        step
    ) in steps.values():  # warm-up: allocator, kernels, optimiser state, compilation
        timed(step, 2, device)
    repeats = max(
        1, round(seconds / timed(steps["going_modular"], 1, device))
    )  # steps in about `seconds`
    durations = {name: [] for name in steps}
    peaks = []
    names = list(steps)
    for r in range(
        rounds
    ):  # each round starts with another implementation: going first is slower (allocator)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            durations[name].append(timed(steps[name], repeats, device))
        peaks.append(matmul_flops(device))
    rate = {
        name: batch * repeats / statistics.median(values)
        for name, values in durations.items()
    }
    flops = rate["going_modular"] * forward_flops * (1 if mode == "inference" else 3)
    # each round's ratio (ours against the fastest other of that round), then the median:
    # a change in the machine's load between rounds moves a round's three together
    ratios = [
        min(durations[name][r] for name in IMPLEMENTATIONS[1:])
        / durations["going_modular"][r]
        for r in range(rounds)
    ]
    return {
        "variant": variant,
        "mode": mode
        + ("" if amp is None else ", bf16")
        + (", compiled" if compile_models else ""),
        "batch": batch,
        "rate": rate,
        "ratio": statistics.median(ratios),
        "flops": flops,
        "peak": statistics.median(peaks),
    }


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| ViT | step | batch | ours (img/s) | torchvision | timm | ours / fastest other | ours, GFLOP/s "
        "| of the matmul peak |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        rate = row["rate"]
        lines.append(
            f"| {row['variant']} | {row['mode']} | {row['batch']} | {rate['going_modular']:.3g} | "
            f"{rate['torchvision']:.3g} | {rate['timm']:.3g} | {row['ratio']:.2f} | {row['flops'] / 1e9:.0f} | "
            f"{row['flops'] / row['peak']:.0%} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict]):
    """A bar chart: for each row, the images per second of each implementation, relative to ours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.55 * len(rows)))
    height = 0.8 / len(IMPLEMENTATIONS)
    for k, name in enumerate(IMPLEMENTATIONS):
        values = [row["rate"][name] / row["rate"]["going_modular"] for row in rows]
        ax.barh(
            [i + (k - 1) * height for i in range(len(rows))],
            values,
            height=height,
            label=name,
        )
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_yticks(
        range(len(rows)),
        [f"{row['variant']} {row['mode']}, batch {row['batch']}" for row in rows],
    )
    ax.invert_yaxis()
    ax.set_xlim(0.5, 1.5)
    ax.set_xlabel("images per second, relative to going_modular (right of 1: faster)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants", nargs="+", default=["Ti/16", "B/16"], help="create_vit names"
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="images per step (default: 8 on the CPU, 64 on CUDA)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=7,
        help="timed rounds per implementation (median reported)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=2.0,
        help="rough length of one timed round per row",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: PyTorch's choice)",
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--pin-malloc",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep freed memory in glibc's heap (timing.pin_malloc; default: on)",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help="also write the table (with its context) here",
    )
    parser.add_argument(
        "--figure",
        type=Path,
        default=None,
        help="also draw the images/s of every row as a PNG here",
    )
    args = parser.parse_args(argv)
    if min(args.rounds, args.image_size, args.batch or 1) < 1 or args.seconds <= 0:
        parser.error("--rounds, --image-size, --batch and --seconds must be positive")
    device = torch.device(args.device)
    pinned = pin_malloc() if args.pin_malloc else False
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    batch = args.batch or (64 if device.type == "cuda" else 8)
    settings = [dict()]
    if device.type == "cuda":
        settings += [
            dict(amp=torch.bfloat16),
            dict(amp=torch.bfloat16, compile_models=True),
        ]
    rows = []
    for variant in args.variants:
        for setting in settings:
            for mode in ("inference", "training"):
                row = measure(variant, mode, image_size=args.image_size, batch=batch, seconds=args.seconds,
                              rounds=args.rounds, device=device, **setting)  # fmt: skip
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)
    context = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f"; glibc malloc {'pinned (no trimming)' if pinned else 'as is'}"
        + f"; torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}; "
        f"float32 matmul peak {statistics.median(row['peak'] for row in rows) / 1e9:.0f} GFLOP/s; "
        f"{args.rounds} interleaved rounds per row; measured {datetime.date.today().isoformat()}"
    )
    print(context)
    print(table(rows))
    if args.markdown is not None:
        with atomic_write(args.markdown) as tmp:
            tmp.write_text(f"{table(rows)}\n\n*{context}.*\n", encoding="utf-8")
    if args.figure is not None:
        with atomic_write(args.figure) as tmp:
            plot(rows).savefig(tmp, format="png", dpi=120)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
