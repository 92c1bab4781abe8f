"""load_pretrained(name, weights): the online paths against an HTTP server on 127.0.0.1, and the offline failures.

torchvision's weights come through torch.hub (the URL patched to 127.0.0.1), timm's through huggingface_hub
(HF_ENDPOINT pointing at 127.0.0.1, which serves the two requests of the Hub's protocol: HEAD, then GET).
"""

import hashlib
import importlib
import io
import logging
import re
import time
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import timm
import torch
import torchvision
from safetensors.torch import save as save_safetensors

from conftest import randomise_all, write_jax_npz
from going_modular.files import DownloadError
from going_modular.pretrained import ImagePreprocessing, load_pretrained
from going_modular.variants import create_vit

pytestmark = pytest.mark.usefixtures("one_thread")
TIMM_NAME = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
TIMM_PATH = f"/timm/{TIMM_NAME}/resolve/main/model.safetensors"


def hub_settings(monkeypatch, **environment: str | None) -> None:
    """Set (or, with None, unset) environment variables and have huggingface_hub read them again.

    huggingface_hub reads HF_HOME, HF_ENDPOINT and HF_HUB_OFFLINE once, when it is imported; reloading its
    constants makes it behave as a process started with that environment.
    """
    for name, value in environment.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    importlib.reload(huggingface_hub.constants)


@pytest.fixture(autouse=True)
def empty_caches(server, tmp_path, monkeypatch):
    """Empty torch hub, Hugging Face and JAX caches in tmp_path, no requests yet; HF_HUB_OFFLINE=1 as conftest sets
    it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("GOING_MODULAR_CACHE", str(tmp_path / "cache"))
    hub_settings(monkeypatch, HF_HOME=str(tmp_path / "hf"))
    server.hits.clear()
    yield
    monkeypatch.undo()
    importlib.reload(huggingface_hub.constants)


@pytest.fixture
def timm_hub(server, monkeypatch, empty_caches):
    """A random timm ViT-Ti/16, served as the Hub's model.safetensors of TIMM_NAME from 127.0.0.1."""
    torch.manual_seed(0)
    reference = randomise_all(timm.create_model("vit_tiny_patch16_224"), std=0.02)
    server.routes[TIMM_PATH] = save_safetensors(reference.state_dict())
    hub_settings(monkeypatch, HF_ENDPOINT=server.url, HF_HUB_OFFLINE=None)
    return reference


def torch_hub_checkpoints() -> Path:
    """Where torch.hub and torchvision keep downloaded weights (under TORCH_HOME, a temporary folder here)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def serve_torchvision_b32(server, monkeypatch, body: bytes, digest: str) -> str:
    """Serve ``body`` as torchvision's ViT-B/32 weights, named with the SHA-256 prefix ``digest``; return the path."""
    path = f"/models/vit_b_32-{digest[:8]}.pth"
    server.routes[path] = body
    monkeypatch.setattr(
        torchvision.models.ViT_B_32_Weights.IMAGENET1K_V1.value,
        "url",
        f"{server.url}{path}",
    )
    return path


def test_torchvision_weights_download_with_a_progress_bar_load_and_match_torchvision(
    server, monkeypatch, capsys
):
    # ViT-B/32 is torchvision's smallest ViT with weights; the file is served from 127.0.0.1.
    torch.manual_seed(0)
    reference = randomise_all(torchvision.models.vit_b_32(), std=0.02)
    buffer = io.BytesIO()
    torch.save(reference.state_dict(), buffer)
    body = buffer.getvalue()
    path = serve_torchvision_b32(
        server, monkeypatch, body, hashlib.sha256(body).hexdigest()
    )
    model, preprocessing = load_pretrained("B/32", "torchvision")
    assert "100%" in capsys.readouterr().err  # torch.hub's progress bar
    assert preprocessing == ImagePreprocessing(
        256, 224, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    )
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-4)
    assert not model.training
    load_pretrained("B/32", "torchvision:IMAGENET1K_V1")  # cached: no second download
    assert server.hits == [f"GET {path}"]
    assert [p.name for p in torch_hub_checkpoints().iterdir()] == [
        path.rsplit("/", 1)[1]
    ]


def test_torchvision_weights_failing_their_hash_are_deleted_and_named(
    server, monkeypatch
):
    path = serve_torchvision_b32(server, monkeypatch, b"not the weights", "0123abcd")
    cached = torch_hub_checkpoints() / path.rsplit("/", 1)[1]
    with pytest.raises(
        DownloadError,
        match=f"vit_b_32 IMAGENET1K_V1 weights need a download from .* into {cached}, .*corrupt",
    ):
        load_pretrained("B/32", "torchvision")
    assert (
        list(cached.parent.iterdir()) == []
    )  # neither the file nor a .partial: the next call downloads again


def test_timm_weights_come_from_the_hub_endpoint_into_the_hugging_face_cache(
    server, timm_hub, tmp_path, monkeypatch
):
    model, preprocessing = load_pretrained("Ti/16", TIMM_NAME)
    weights_requests = [
        hit for hit in server.hits if hit.endswith(TIMM_PATH)
    ]  # the Hub client may ask other things
    assert weights_requests == [f"HEAD {TIMM_PATH}", f"GET {TIMM_PATH}"]
    snapshots = tmp_path / "hf" / "hub" / f"models--timm--{TIMM_NAME}" / "snapshots"
    assert [p.name for p in snapshots.glob("*/*")] == ["model.safetensors"]
    hub_settings(
        monkeypatch, HF_HUB_OFFLINE="1"
    )  # offline, the cached file is used: what timm would use too
    again, _ = load_pretrained("Ti/16", TIMM_NAME)
    assert [
        hit for hit in server.hits if hit.endswith(TIMM_PATH)
    ] == weights_requests  # no request for the weights
    torch.testing.assert_close(again.state_dict(), model.state_dict(), rtol=0, atol=0)
    assert preprocessing == ImagePreprocessing(
        248, 224, "bicubic", (0.5,) * 3, (0.5,) * 3
    )  # crop_pct 0.9
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), timm_hub(x), rtol=0, atol=1e-4)


def test_fine_tuning_options_resize_e_pos_and_zero_the_head(timm_hub):
    model, preprocessing = load_pretrained(
        "Ti/16", TIMM_NAME, img_size=384, num_classes=10, drop_path_rate=0.1
    )
    assert (
        model.position_embedding.shape == (1, 1 + 24 * 24, 192)
        and model.config.img_size == 384
    )
    assert model.head.weight.shape == (10, 192) and model.head.weight.abs().max() == 0
    assert model.config.drop_path_rate == 0.1
    assert (preprocessing.resize_size, preprocessing.crop_size) == (
        round(248 * 384 / 224),
        384,
    )


def test_offline_fails_fast_saying_a_download_is_needed(monkeypatch, closed_port):
    weights = torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1
    monkeypatch.setattr(
        weights.value, "url", f"http://127.0.0.1:{closed_port}/vit_b_16.pth"
    )  # refused at once
    start = time.perf_counter()
    with pytest.raises(
        DownloadError, match="weights need a download from http://127.0.0.1"
    ):
        load_pretrained("B/16", "torchvision")
    assert time.perf_counter() - start < 5


def test_hf_hub_offline_fails_at_once_without_a_cached_file(server, tmp_path):
    start = time.perf_counter()
    message = (
        f"timm's {TIMM_NAME} weights need a download from https://huggingface.co/timm/{TIMM_NAME}/resolve/main/"
        f"model.safetensors into the Hugging Face cache {tmp_path / 'hf' / 'hub'}, which failed (HF_HUB_OFFLINE is set)"
    )
    with pytest.raises(DownloadError, match=re.escape(message)):
        load_pretrained("Ti/16", TIMM_NAME)  # conftest sets HF_HUB_OFFLINE=1
    assert time.perf_counter() - start < 5 and server.hits == []


@pytest.mark.parametrize(
    "name, weights, kwargs, message",
    [
        ("S/16", TIMM_NAME, {}, "is not a timm name of ViT-S/16 weights"),
        ("Ti/16", "vit_tiny_patch16_224.no_such_tag", {}, "Invalid pretrained tag"),
        ("Ti/16", "torchvision", {}, "torchvision has no weights for ViT-Ti/16"),
        ("B/16", "torchvision:IMAGENET21K", {}, "has no weights 'IMAGENET21K'"),
        (
            "B/16",
            "torchvision",
            {"embed_dim": 512},
            "pretrained weights fix ['embed_dim']",
        ),
        ("B/16", "torchvision", {"img_size": (224, 320)}, "img_size must be an int"),
    ],
)
def test_bad_requests_are_refused_before_any_download(
    server, name, weights, kwargs, message
):
    with pytest.raises(
        ValueError, match=message.replace("[", r"\[").replace("(", r"\(")
    ):
        load_pretrained(name, weights, **kwargs)
    assert server.hits == []


def test_jax_npz_by_path_uses_the_tanh_gelu_and_says_so(tmp_path, caplog):
    path = write_jax_npz(tmp_path / "ViT.npz", create_vit("Ti/16", num_classes=5))
    with caplog.at_level(logging.WARNING, logger="going_modular.pretrained"):
        model, preprocessing = load_pretrained("Ti/16", path)
    assert "tanh GELU" in caplog.text
    assert model.config.gelu_approximate == "tanh" and model.config.num_classes == 5
    assert preprocessing == ImagePreprocessing(
        (224, 224), 224, "bilinear", (0.5,) * 3, (0.5,) * 3
    )
    with pytest.raises(ValueError, match="another architecture than ViT-S/16"):
        load_pretrained("S/16", path)


def test_jax_npz_by_url_is_downloaded_once(server, tmp_path):
    path = write_jax_npz(
        tmp_path / "ViT.npz", create_vit("Ti/16", num_classes=5, depth=12)
    )
    server.routes["/vit_models/ViT-Ti_16.npz"] = Path(path).read_bytes()
    for _ in range(2):
        model, _ = load_pretrained("Ti/16", f"{server.url}/vit_models/ViT-Ti_16.npz")
    assert (
        server.hits == ["GET /vit_models/ViT-Ti_16.npz"]
        and model.config.num_classes == 5
    )


def test_image_preprocessing_equals_torchvisions_transform():
    from PIL import Image

    image = Image.fromarray(
        np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    )
    reference = torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1.transforms()
    ours = ImagePreprocessing(
        256, 224, "bilinear", tuple(reference.mean), tuple(reference.std)
    )
    torch.testing.assert_close(ours(image), reference(image), rtol=0, atol=1e-5)
