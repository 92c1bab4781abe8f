"""Time the NumPy forward pass (going_modular.numpy_vit) against PyTorch's on the CPU.

A ViT with random weights is saved as a checkpoint and loaded by both sides; one image (batch 1)
goes through each forward pass ``--repeats`` times after a warm-up, and the medians and their
ratio are printed. ``--threads N`` pins both libraries to N threads: it sets OPENBLAS_NUM_THREADS,
OMP_NUM_THREADS and MKL_NUM_THREADS before NumPy is imported, and ``torch.set_num_threads(N)``.
On a loaded machine, multi-threaded BLAS on small matrices can be far slower than one thread.

Usage::

    HF_HUB_OFFLINE=1 python benchmarks/numpy_forward.py                 # ViT-Ti/16 at 224x224
    HF_HUB_OFFLINE=1 python benchmarks/numpy_forward.py --threads 1 --variant S/16
    HF_HUB_OFFLINE=1 python benchmarks/numpy_forward.py --threads 1 --markdown book/_generated/numpy_cpu.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

from timing import median_seconds  # stdlib only: NumPy is imported later, after --threads


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="Ti/16", help="a create_vit variant (default Ti/16)")
    parser.add_argument("--img-size", type=int, default=224, help="image height and width (default 224)")
    parser.add_argument("--repeats", type=int, default=20, help="timed forward passes per side (default 20)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for NumPy's BLAS and PyTorch (default: each library's own default)",
    )
    parser.add_argument("--markdown", type=Path, default=None, help="also write the result as a Markdown table here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
    with torch.no_grad():  # the head and class token start at zero: give every parameter some noise
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    image = torch.randn(1, 3, args.img_size, args.img_size)
    with tempfile.TemporaryDirectory() as tmp:
        metadata = {"class_names": [f"class {k}" for k in range(1000)], "preprocessing": {}}
        save_model(model, Path(tmp) / "ckpt", metadata)
        hparams, params = numpy_vit.load_hparams_and_params(Path(tmp) / "ckpt")
    array = image[0].numpy()

    def numpy_forward() -> np.ndarray:
        return numpy_vit.vit(array, **params, n_head=hparams["num_heads"])

    def torch_forward() -> torch.Tensor:
        with torch.no_grad():
            return model(image)

    difference = float(np.abs(numpy_forward() - torch_forward()[0].numpy()).max())
    numpy_s = median_seconds(numpy_forward, args.repeats)
    torch_s = median_seconds(torch_forward, args.repeats)

    threads = "library defaults" if args.threads is None else str(args.threads)
    print(
        f"ViT-{args.variant} at {args.img_size}x{args.img_size}, batch 1, median of {args.repeats} runs, "
        f"threads: {threads} (torch uses {torch.get_num_threads()}, cpus {os.cpu_count()})"
    )
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}"
    )
    print(f"max |numpy - torch| logit difference: {difference:.2e}")
    print(f"numpy forward:   {numpy_s * 1e3:8.1f} ms")
    print(f"pytorch forward: {torch_s * 1e3:8.1f} ms")
    print(f"numpy / pytorch: {numpy_s / torch_s:8.2f}x")
    if args.markdown is not None:
        from going_modular.files import atomic_write

        with atomic_write(args.markdown) as tmp:
            tmp.write_text(
                "| ViT | threads | NumPy (ms) | PyTorch (ms) | NumPy / PyTorch | max logit difference |\n"
                "| --- | ---: | ---: | ---: | ---: | ---: |\n"
                f"| {args.variant} at {args.img_size} px, batch 1 | {threads} | {numpy_s * 1e3:.1f} | "
                f"{torch_s * 1e3:.1f} | {numpy_s / torch_s:.2f} | {difference:.1e} |\n\n"
                f"*Median of {args.repeats} runs; numpy {np.__version__}, torch {torch.__version__}.*\n",
                encoding="utf-8",
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
