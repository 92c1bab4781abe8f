"""Test-session settings that must hold before anything imports timm or starts a kernel, and shared helpers.

Helpers are plain functions and constants, imported by the test modules with ``from conftest import randomise_head``;
shared fixtures (``one_thread``, ``close_figures``, ``random_digits_vit``, ``server``, ``closed_port``) are found by
pytest by name.
"""

import contextlib
import functools
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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

from going_modular.checkpoint import (
    CONFIG_FILE,
)  # below the setting: no module of the package sees it unset
from going_modular.data import make_preprocessing
from going_modular.vit import ViT, ViTConfig


@pytest.fixture
def one_thread():
    """Tiny models run fastest, and reproducibly, on one thread; restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def close_figures() -> Iterator[None]:
    """Close every matplotlib figure when the test ends (pyplot keeps them all open otherwise).

    A module that draws uses it for every test: ``pytestmark = pytest.mark.usefixtures("close_figures")``.
    """
    yield
    import matplotlib.pyplot as plt  # here: the test module has chosen the backend by now

    plt.close("all")


def edit_config(folder: Path, edit: Callable[[dict], object]) -> None:
    """Rewrite the config.json of the checkpoint ``folder``: ``edit`` changes its JSON document (a dict) in place."""
    document = json.loads((folder / CONFIG_FILE).read_text())
    edit(document)
    (folder / CONFIG_FILE).write_text(json.dumps(document))


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
        raise TypeError(
            f"expected a model with a Linear head, got {type(head).__name__}"
        )
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


# The digits set-up of the unit tests: 8x8 grey images with values in [0, 16] of the classes 0-9 (scikit-learn's
# digits), and a two-block ViT for them (2x2 patches of 4x4 pixels, D = 16, two heads).
DIGITS_VIT = ViTConfig(
    img_size=8,
    patch_size=4,
    in_channels=1,
    num_classes=10,
    embed_dim=16,
    depth=2,
    num_heads=2,
)
DIGITS_SPEC = make_preprocessing(8, channels=1, max_value=16.0, mean=[0.5], std=[0.5])
DIGITS_CLASSES = [str(d) for d in range(10)]
# The metrics `engine.train` records after every epoch, written out here (not read from the engine).
HISTORY_KEYS = (
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "lr",
    "seconds",
)


@pytest.fixture
def random_digits_vit() -> ViT:
    """A ViT of ``DIGITS_VIT`` with every parameter drawn from N(0, 0.5²) (seed 0), in eval mode."""
    torch.manual_seed(0)
    return randomise_all(ViT(DIGITS_VIT), 0.5, replace=True)


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


DURATIONS = Path(__file__).parent / "durations.json"
_SECONDS: dict[str, float] = {}


def pytest_addoption(parser):
    parser.addoption(
        "--record-durations",
        action="store_true",
        help="write the seconds each test file took (all phases) to tests/durations.json",
    )


def pytest_runtest_logreport(report):
    """Add up each file's seconds (on the controller too, under pytest-xdist)."""
    path = report.nodeid.split("::")[0]
    _SECONDS[path] = _SECONDS.get(path, 0.0) + report.duration


def pytest_sessionfinish(session):
    if session.config.getoption("--record-durations") and not hasattr(
        session.config, "workerinput"
    ):
        slow = {
            path: round(seconds)
            for path, seconds in sorted(_SECONDS.items(), key=lambda item: -item[1])
            if seconds >= 5 or path.endswith(".ipynb")
        }
        partial = DURATIONS.with_suffix(".json.partial")
        partial.write_text(json.dumps(slow, indent=2) + "\n", encoding="utf-8")
        partial.replace(DURATIONS)


def pytest_collection_modifyitems(config, items):
    """Mark the chapters slow, and start the longest files first, so that `make test`'s two workers finish at
    about the same time.

    tests/durations.json holds the seconds each chapter and slow file took
    (``make test PYTEST_ARGS=--record-durations`` writes it); files not in it count as fast. Within a file the order is kept, as nbval needs.
    """
    for item in items:
        if (
            item.path.suffix == ".ipynb"
        ):  # a chapter under nbval: a kernel, so not `make unit`
            item.add_marker(pytest.mark.slow)
    seconds = json.loads(DURATIONS.read_text(encoding="utf-8"))
    root = config.rootpath
    items.sort(
        key=lambda item: -seconds.get(item.path.relative_to(root).as_posix(), 0)
    )  # a stable sort


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps the test output free of access logs."""

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def http_server(handler: Callable[..., BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` (a request handler class, or a partial of one) on 127.0.0.1 (a free port) in a background
    thread; yield the base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@dataclass(frozen=True)
class Reply:
    """A route of the ``server`` fixture that answers other than plainly: ``body`` after ``delay`` seconds, announced
    as ``length`` bytes (None: its true length; more than that, and the client sees the connection close early)."""

    body: bytes
    length: int | None = None
    delay: float = 0.0


class RouteHandler(QuietHandler):
    """Answers GET, and HEAD without the body, from ``routes`` (URL path -> bytes or a Reply), with the headers the
    Hugging Face Hub's HEAD sends (Content-Length, the body's SHA-256 as ETag, a commit hash); 404 for any other path.
    Appends every request ("GET /path") to ``hits``."""

    def __init__(
        self, *args, routes: dict[str, bytes | Reply], hits: list[str], **kwargs
    ) -> None:
        self.routes, self.hits = routes, hits
        super().__init__(
            *args, **kwargs
        )  # handles the request: the attributes must exist first

    def do_HEAD(self) -> None:  # noqa: N802 (the name http.server expects)
        self.answer(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self.answer(body=True)

    def answer(self, body: bool) -> None:
        self.hits.append(f"{self.command} {self.path}")
        route = self.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        reply = route if isinstance(route, Reply) else Reply(route)
        time.sleep(reply.delay)
        self.send_response(200)
        self.send_header(
            "Content-Length",
            str(len(reply.body) if reply.length is None else reply.length),
        )
        self.send_header("ETag", f'"{hashlib.sha256(reply.body).hexdigest()}"')
        self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
        self.end_headers()  # HTTP/1.0: the connection closes after the body, sent whole or not
        if body:
            self.wfile.write(reply.body)


@dataclass(frozen=True)
class LocalServer:
    """What the ``server`` fixture yields: the base URL, the routes it serves (a test may add some) and the requests
    it has had, in order."""

    url: str
    routes: dict[str, bytes | Reply]
    hits: list[str]


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest) -> Iterator[LocalServer]:
    """An HTTP server on 127.0.0.1 for the test module (see ``RouteHandler``), serving the module's ``ROUTES``
    (URL path -> bytes or a Reply) if it defines them."""
    routes, hits = dict(getattr(request.module, "ROUTES", {})), []
    with http_server(functools.partial(RouteHandler, routes=routes, hits=hits)) as url:
        yield LocalServer(url, routes, hits)


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: a connection to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_jax_npz(path, model) -> str:
    """An original-JAX-layout checkpoint of ``model``'s configuration at ``path``, entries N(0, 0.02²), seed 0."""
    import numpy as np

    from going_modular.jax_checkpoint import jax_npz_layout

    rng = np.random.default_rng(0)
    np.savez(
        path,
        **{
            key: rng.normal(0, 0.02, shape).astype(np.float32)
            for key, shape in jax_npz_layout(model).items()
        },
    )
    return str(path)
