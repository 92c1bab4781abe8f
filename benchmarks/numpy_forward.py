"""Time the NumPy forward pass (going_modular.numpy_vit) against PyTorch's on the CPU.

A ViT with random weights is saved as a checkpoint and loaded by both sides; one image (batch 1)
goes through each forward pass ``--repeats`` times after a warm-up, and the medians and their
ratio are printed. ``--threads N`` pins both libraries to N threads: it sets OPENBLAS_NUM_THREADS,
OMP_NUM_THREADS and MKL_NUM_THREADS before NumPy is imported, and ``torch.set_num_threads(N)``.
On a loaded machine, multi-threaded BLAS on small matrices can be far slower than one thread.

Usage::

    HF_HUB_OFFLINE=1 python benchmarks/numpy_forward.py                 # ViT-Ti/16 at 224x224
    HF_HUB_OFFLINE=1 python benchmarks/numpy_forward.py --threads 1 --variant S/16
    HF_HUB_OFFLINE=1 python benchmarks/numpy_forward.py --threads 1 --processes 6 --markdown book/_generated/numpy_cpu.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import (
    median_seconds,
)  # stdlib only: NumPy is imported later, after --threads


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variant", default="Ti/16", help="a create_vit variant (default Ti/16)"
    )
    parser.add_argument(
        "--img-size", type=int, default=224, help="image height and width (default 224)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=20,
        help="timed forward passes per side (default 20)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for NumPy's BLAS and PyTorch (default: each library's own default)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="repeat the measurement in this many fresh processes and report the median and range of the ratio "
        "(it varies between processes with the state of the C allocator; default 1)",
    )
    parser.add_argument(
        "--json", action="store_true", help=argparse.SUPPRESS
    )  # one process's numbers, for --processes
    parser.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help="also write the result as a Markdown table here",
    )
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error(f"--processes must be at least 1, got {args.processes}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    return args


def measure(args: argparse.Namespace) -> dict:
    """One process's medians: NumPy and PyTorch forward seconds, and their largest logit difference."""
    if args.threads is not None:  # BLAS reads these once, when NumPy is first imported
        if "numpy" in sys.modules:
            raise RuntimeError("--threads must be applied before NumPy is imported")
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(args.threads)
    import numpy as np
    import torch

    from going_modular import create_vit, numpy_vit
    from going_modular.checkpoint import save_model

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_vit(args.variant, num_classes=1000, img_size=args.img_size).eval()
    with (
        torch.no_grad()
    ):  # the head and class token start at zero: give every parameter some noise
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    image = torch.randn(1, 3, args.img_size, args.img_size)
    with tempfile.TemporaryDirectory() as tmp:
        metadata = {
            "class_names": [f"class {k}" for k in range(1000)],
            "preprocessing": {},
        }
        save_model(model, Path(tmp) / "ckpt", metadata)
        hparams, params = numpy_vit.load_hparams_and_params(Path(tmp) / "ckpt")
    array = image[0].numpy()

    def numpy_forward() -> np.ndarray:
        return numpy_vit.vit(array, **params, n_head=hparams["num_heads"])

    def torch_forward() -> torch.Tensor:
        with torch.no_grad():
            return model(image)

    difference = float(np.abs(numpy_forward() - torch_forward()[0].numpy()).max())
    return {
        "numpy_s": median_seconds(numpy_forward, args.repeats),
        "torch_s": median_seconds(torch_forward, args.repeats),
        "difference": difference,
        "versions": f"numpy {np.__version__}, torch {torch.__version__}",
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.processes == 1:
        runs = [measure(args)]
    else:  # each in a fresh interpreter: the allocator's state is part of what is measured
        command = [
            sys.executable,
            __file__,
            "--variant",
            args.variant,
            "--img-size",
            str(args.img_size),
        ]
        command += [
            "--repeats",
            str(args.repeats),
            "--json",
            *(["--threads", str(args.threads)] * bool(args.threads)),
        ]
        runs = [json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
                for _ in range(args.processes)]  # fmt: skip
    if args.json:
        print(json.dumps(runs[0]))
        return 0
    ratios = sorted(run["numpy_s"] / run["torch_s"] for run in runs)
    numpy_s = statistics.median(run["numpy_s"] for run in runs)
    torch_s = statistics.median(run["torch_s"] for run in runs)
    difference = max(run["difference"] for run in runs)
    threads = "library defaults" if args.threads is None else str(args.threads)
    print(
        f"ViT-{args.variant} at {args.img_size}x{args.img_size}, batch 1, median of {args.repeats} runs in each of "
        f"{len(runs)} process(es), threads: {threads} (torch uses {runs[0]['torch_threads']}, cpus {os.cpu_count()})"
    )
    print(f"python {platform.python_version()}, {runs[0]['versions']}")
    print(f"max |numpy - torch| logit difference: {difference:.2e}")
    print(f"numpy forward:   {numpy_s * 1e3:8.1f} ms")
    print(f"pytorch forward: {torch_s * 1e3:8.1f} ms")
    print(
        f"numpy / pytorch: {statistics.median(ratios):8.2f}x (per process: {', '.join(f'{r:.2f}' for r in ratios)})"
    )
    if args.markdown is not None:
        from going_modular.files import atomic_write

        spread = (
            f"{ratios[0]:.2f} to {ratios[-1]:.2f}" if len(runs) > 1 else "one process"
        )
        with atomic_write(args.markdown) as tmp:
            tmp.write_text(
                "| ViT | threads | NumPy (ms) | PyTorch (ms) | NumPy / PyTorch | per process | max logit difference |\n"
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
                f"| {args.variant} at {args.img_size} px, batch 1 | {threads} | {numpy_s * 1e3:.1f} | "
                f"{torch_s * 1e3:.1f} | {statistics.median(ratios):.2f} | {spread} | {difference:.1e} |\n\n"
                f"*Medians of {args.repeats} forward passes in each of {len(runs)} fresh processes; "
                f"{runs[0]['versions']}.*\n",
                encoding="utf-8",
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
