"""Test-session settings that must hold before anything imports timm or starts a kernel, and shared helpers.

Helpers are plain functions, imported by the test modules with ``from conftest import randomise_head``.
"""

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from torch import nn

# timm looks for pretrained weights on the Hugging Face Hub unless told to stay offline; the
# kernels that nbval starts inherit this environment, so the chapters stay offline too.
os.environ["HF_HUB_OFFLINE"] = "1"

# MPLBACKEND is deliberately left unset: without a display, matplotlib already picks Agg in this
# process, while an MPLBACKEND here would reach the kernels too and replace their inline backend,
# so the figures nbval compares would silently disappear from the chapters' outputs.


@pytest.fixture
def one_thread():
    """Tiny models run fastest, and reproducibly, on one thread; restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_in_process(argv: list[str]) -> None:
    """Run the command line's ``main(argv)`` in this process; it must succeed. Restores torch's thread count,
    which ``--threads`` changes."""
    from going_modular.train import main

    threads = torch.get_num_threads()
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)


def randomise_head(model: nn.Module, std: float = 0.05) -> nn.Module:
    """Draw the zero-initialised head (weight and bias) and class token from N(0, std²), in place.

    A ViT starts with a zero head (and a zero class token), so every logit is 0 and any comparison
    between two models would pass. Works on going_modular's ViT (``head``, ``class_token``),
    torchvision's VisionTransformer (``heads.head``, ``class_token``) and timm's (``head``,
    ``cls_token``). Returns ``model``; uses the global torch generator (seed it first).
    """
    head = model.heads.head if hasattr(model, "heads") else model.head
    if not isinstance(head, nn.Linear):
        raise TypeError(f"expected a model with a Linear head, got {type(head).__name__}")
    token = model.class_token if hasattr(model, "class_token") else model.cls_token
    with torch.no_grad():
        for tensor in (head.weight, head.bias, token):
            if tensor is not None:
                tensor.normal_(std=std)
    return model


def randomise_all(model: nn.Module, std: float, *, replace: bool = False) -> nn.Module:
    """Give every parameter a non-trivial value, in place; return ``model`` in eval mode.

    Not only the head: biases start at 0 and LayerNorms at the identity, and a comparison should
    exercise every weight. ``replace=False`` adds N(0, std²) noise to each parameter (keeping the
    initialiser's scale); ``replace=True`` redraws each from N(0, std²). Uses the global generator.
    """
    with torch.no_grad():
        for parameter in model.parameters():
            if replace:
                parameter.normal_(0, std)
            else:
                parameter.add_(std * torch.randn_like(parameter))
    return model.eval()


def corrupt(data: bytes, case: str) -> bytes:
    """A safetensors file's bytes, broken in the named way (for the tests of the one reader)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    name = next(key for key in header if key != "__metadata__")
    if case == "truncated":
        return data[: len(data) // 2]
    if case == "short":
        return data[:5]
    if case == "huge-header-length":
        return (len(data) * 2).to_bytes(8, "little") + data[8:]
    if case == "not-json":
        return data[:8] + b"\xff" * n + data[8 + n :]
    header[name] = {
        "bad-offsets": dict(header[name], data_offsets=[0, 3]),
        "bad-dtype": dict(header[name], dtype="F8_E4M3"),
        "no-shape": {k: v for k, v in header[name].items() if k != "shape"},
    }[case]
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def pytest_collection_modifyitems(config, items):
    """Mark the chapters slow, and start the longest files first, so that `make test`'s two workers finish at
    about the same time.

    tests/durations.json holds the seconds each slow file took (``make test PYTEST_ARGS=--durations=0``);
    files not in it count as fast. Within a file the order is kept, as nbval needs.
    """
    for item in items:
        if item.path.suffix == ".ipynb":  # a chapter under nbval: a kernel, so not `make unit`
            item.add_marker(pytest.mark.slow)
    seconds = json.loads((Path(__file__).parent / "durations.json").read_text(encoding="utf-8"))
    root = config.rootpath
    items.sort(key=lambda item: -seconds.get(item.path.relative_to(root).as_posix(), 0))  # a stable sort


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps the test output free of access logs."""

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on 127.0.0.1 (a free port) in a background thread; yield the base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def write_jax_npz(path, model) -> str:
    """An original-JAX-layout checkpoint of ``model``'s configuration at ``path``, entries N(0, 0.02²), seed 0."""
    import numpy as np

    from going_modular.jax_checkpoint import jax_npz_layout

    rng = np.random.default_rng(0)
    np.savez(
        path, **{key: rng.normal(0, 0.02, shape).astype(np.float32) for key, shape in jax_npz_layout(model).items()}
    )
    return str(path)
