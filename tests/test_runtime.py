"""Tests for going_modular.runtime: seeding every generator, independent streams, the device to train on."""

import random

import numpy as np
import pytest
import torch

from going_modular.runtime import get_device, set_seed, stream_seed


def draw() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_set_seed_repeats_every_generator():
    set_seed(123)
    first = draw()
    set_seed(123)
    assert draw() == first
    set_seed(124)
    assert all(a != b for a, b in zip(draw(), first, strict=True))
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="seed must be a non-negative int"):
            set_seed(bad)


def test_set_seed_takes_seeds_beyond_32_bits():
    set_seed(5)
    small = draw()
    set_seed(2**32 + 5)
    # random uses the whole seed; NumPy gets seed % 2**32, and PyTorch's CPU generator keeps the low 32 bits too
    assert [a == b for a, b in zip(small, draw(), strict=True)] == [False, True, True]


def test_stream_seeds_are_32_bit_functions_of_the_whole_key():
    pairs = [(seed, epoch) for seed in range(10) for epoch in range(1, 11)]
    seeds = [stream_seed(*pair) for pair in pairs]
    assert len(set(seeds)) == len(pairs)  # seed + epoch would give 19 values
    assert all(0 <= s < 2**32 for s in seeds) and stream_seed(3, 1) == stream_seed(3, 1)
    assert stream_seed(0, 1) != stream_seed(1, 0) and stream_seed(7) == stream_seed(
        7, 0
    )  # trailing zeros: dropped


def test_get_device():
    assert get_device("cpu") == torch.device("cpu")
    assert get_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ValueError, match="expected 'auto'"):
        get_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            get_device("cuda")
