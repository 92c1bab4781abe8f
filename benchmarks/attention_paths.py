"""Time the ViT's forward pass against ``forward_attention``, which also returns the attention maps.

The forward pass calls F.scaled_dot_product_attention and never builds the (T, T) maps;
``forward_attention`` computes softmax(QK^T / sqrt(D_h)) of every block explicitly. This script
prints the measured median forward time of each path and their ratio (no target: it is a report).

    python benchmarks/attention_paths.py [--model Ti/16] [--img-size 224] [--batch 8] [--repeats 10]
"""

from __future__ import annotations

import argparse

import torch
from timing import median_seconds

from going_modular import create_vit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="Ti/16", help="Table 1 variant, e.g. Ti/16, S/16, B/16"
    )
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = create_vit(args.model, img_size=args.img_size).eval()
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    with torch.no_grad():
        default = median_seconds(lambda: model(x), args.repeats)
        with_maps = median_seconds(lambda: model.forward_attention(x), args.repeats)
    tokens = (args.img_size // model.patch_size[0]) * (
        args.img_size // model.patch_size[1]
    ) + 1
    print(
        f"ViT-{args.model}, batch {args.batch}, {tokens} tokens, {torch.get_num_threads()} threads, "
        f"device cpu, torch {torch.__version__}"
    )
    print(f"default path (scaled_dot_product_attention): {default * 1e3:8.1f} ms")
    print(f"forward_attention (explicit softmax, maps): {with_maps * 1e3:8.1f} ms")
    print(f"ratio with maps / default: {with_maps / default:.2f}")


if __name__ == "__main__":
    main()
