"""Profile going_modular's ViT against timm's, op by op, for CPU inference, and time the two interleaved.

Both models are built by ``speed.build`` (same configuration, same weights) and run under
``torch.inference_mode`` in eval mode. The script prints:

1. whether the two logits are equal (``torch.equal``) or their largest difference;
2. for each model, the ops with the most self CPU time per forward pass (``torch.profiler``), and the
   ops whose self CPU time differs most between the two (ours minus timm's), with their call counts;
3. the interleaved timing: ``--rounds`` rounds, each model running ``--repeats`` forward passes per
   round, the order alternating round by round; it reports the median ms per forward pass, the minor
   page faults per forward pass, and the ratio ours / timm in images per second (timm's time over ours)
   of every round: its median and its range.

Page faults decide the difference between two models that run the same ops: by default glibc's malloc
gives freed memory back to the system when the top of its heap is free, and the next large tensor then
faults in fresh pages (a 4 KiB page each, about 1 us). How often that happens depends on the heap's
layout (what else is allocated, and where), not on the model's code, and it can cost a model 20 % in one
process and nothing in the next. So by default the script keeps freed memory in the heap (``mallopt``:
a fixed 32 MiB mmap threshold, no trimming), for both models alike; ``--no-pin-malloc`` shows the
allocator as it is.

    HF_HUB_OFFLINE=1 python benchmarks/profile_inference.py                       # Ti/16, batch 16, 224 pixels
    HF_HUB_OFFLINE=1 python benchmarks/profile_inference.py --no-pin-malloc --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402 (after the environment is set)
from speed import build  # noqa: E402 (benchmarks/speed.py: run this script as `python benchmarks/NAME.py`)
from timing import pin_malloc  # noqa: E402
from torch import nn  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

try:
    import resource  # Unix only
except ImportError:
    resource = None

NAMES = ("going_modular", "timm")


def page_faults() -> int:
    """Minor page faults of this process so far (0 where the ``resource`` module is missing)."""
    return (
        resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        if resource is not None
        else 0
    )


def op_times(step: Callable[[], object], steps: int) -> dict[str, tuple[float, float]]:
    """op name -> (calls, self CPU ms), per forward pass, over ``steps`` profiled passes."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return {
        e.key: (e.count / steps, e.self_cpu_time_total / 1e3 / steps)
        for e in prof.key_averages()
    }


def median_table(
    tables: list[dict[str, tuple[float, float]]],
) -> dict[str, tuple[float, float]]:
    """The median (calls, ms) of every op over ``tables`` (an op missing from one counts as 0 there)."""
    keys = {key for table in tables for key in table}
    return {
        key: tuple(
            statistics.median(table.get(key, (0.0, 0.0))[i] for table in tables)
            for i in range(2)
        )
        for key in keys
    }


def print_top(name: str, table: dict[str, tuple[float, float]], top: int) -> None:
    total = sum(ms for _, ms in table.values())
    print(f"\n{name}: self CPU time per forward pass, {total:.1f} ms in all")
    print(f"  {'op':<52} {'calls':>6} {'ms':>8} {'share':>6}")
    for key, (calls, ms) in sorted(table.items(), key=lambda item: -item[1][1])[:top]:
        print(f"  {key[:52]:<52} {calls:>6.0f} {ms:>8.2f} {ms / total:>6.1%}")


def print_difference(
    ours: dict[str, tuple[float, float]],
    theirs: dict[str, tuple[float, float]],
    top: int,
) -> None:
    rows = [
        (key, ours.get(key, (0.0, 0.0)), theirs.get(key, (0.0, 0.0)))
        for key in set(ours) | set(theirs)
    ]
    rows.sort(key=lambda row: -abs(row[1][1] - row[2][1]))
    total = sum(ms for _, ms in ours.values()) - sum(ms for _, ms in theirs.values())
    print(
        f"\nper op, ours minus timm (self CPU ms per forward pass; all ops: {total:+.2f} ms)"
    )
    print(
        f"  {'op':<52} {'calls ours':>10} {'timm':>6} {'ms ours':>8} {'timm':>8} {'diff':>8}"
    )
    for key, (calls, ms), (their_calls, their_ms) in rows[:top]:
        print(
            f"  {key[:52]:<52} {calls:>10.0f} {their_calls:>6.0f} {ms:>8.2f} {their_ms:>8.2f} {ms - their_ms:>+8.2f}"
        )


def interleaved(
    steps: dict[str, Callable[[], object]], rounds: int, repeats: int
) -> dict[str, dict[str, list[float]]]:
    """Per model: the ms and the page faults per forward pass of every round (the order alternates)."""
    record = {name: {"ms": [], "faults": []} for name in steps}
    names = list(steps)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            faults, start = page_faults(), time.perf_counter()
            for _ in range(repeats):
                steps[name]()
            record[name]["ms"].append((time.perf_counter() - start) * 1e3 / repeats)
            record[name]["faults"].append((page_faults() - faults) / repeats)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variant", default="Ti/16", help="a create_vit name, e.g. Ti/16, S/16, B/16"
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: PyTorch's choice)",
    )
    parser.add_argument(
        "--profile-rounds",
        type=int,
        default=5,
        help="profiles of each model, alternating (median)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=15,
        help="timed rounds per model (median reported)",
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="forward passes per model and round"
    )
    parser.add_argument("--top", type=int, default=12, help="rows of each op table")
    parser.add_argument(
        "--pin-malloc",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep freed memory in glibc's heap (mallopt), as benchmarks/speed.py does (default: on)",
    )
    args = parser.parse_args(argv)
    if (
        min(
            args.batch,
            args.image_size,
            args.profile_rounds,
            args.rounds,
            args.repeats,
            args.top,
        )
        < 1
    ):
        parser.error(
            "--batch, --image-size, --profile-rounds, --rounds, --repeats and --top must be positive"
        )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    pinned = pin_malloc() if args.pin_malloc else False
    if args.pin_malloc and not pinned:
        parser.error("--pin-malloc needs glibc (Linux)")

    built = build(args.variant, args.image_size, torch.device("cpu"))
    models: dict[str, nn.Module] = {name: built.pop(name).eval() for name in NAMES}
    del built  # torchvision's model: not compared here
    images = torch.randn(
        args.batch,
        3,
        args.image_size,
        args.image_size,
        generator=torch.Generator().manual_seed(1),
    )

    def forward(model: nn.Module) -> Callable[[], object]:
        return lambda: model(images)

    steps = {name: forward(model) for name, model in models.items()}
    print(
        f"ViT-{args.variant}, batch {args.batch}, {args.image_size} pixels, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, malloc {'pinned' if pinned else 'as is'}"
    )
    with torch.inference_mode():
        ours, theirs = (step() for step in steps.values())
        same = torch.equal(ours, theirs)
        print(
            "logits:",
            "equal"
            if same
            else f"largest difference {(ours - theirs).abs().max().item():.3g}",
        )
        for step in steps.values():  # warm-up
            step()
            step()
        tables: dict[str, list] = {name: [] for name in NAMES}
        for r in range(args.profile_rounds):
            for name in NAMES[r % 2 :] + NAMES[: r % 2]:
                tables[name].append(op_times(steps[name], steps=1))
        profiles = {name: median_table(tables[name]) for name in NAMES}
        for name in NAMES:
            print_top(name, profiles[name], args.top)
        print_difference(profiles["going_modular"], profiles["timm"], args.top)
        record = interleaved(steps, args.rounds, args.repeats)

    ratios = sorted(
        t / o
        for o, t in zip(
            record["going_modular"]["ms"], record["timm"]["ms"], strict=True
        )
    )
    quartiles = (
        statistics.quantiles(ratios, n=4, method="inclusive")
        if len(ratios) > 1
        else ratios * 3
    )
    print(
        f"\n{args.rounds} interleaved rounds of {args.repeats} forward passes each (median per round):"
    )
    for name in NAMES:
        print(
            f"  {name:<14} {statistics.median(record[name]['ms']):8.1f} ms per forward pass, "
            f"{statistics.median(record[name]['faults']):8.0f} page faults per forward pass"
        )
    print(
        f"  ours / timm (images per second): median {statistics.median(ratios):.3f}, "
        f"quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}, range {ratios[0]:.3f}-{ratios[-1]:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
