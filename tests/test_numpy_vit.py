"""going_modular.numpy_vit against PyTorch: each function, whole checkpoints, and bad input."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file as save_numpy_safetensors

from conftest import corrupt, edit_config, randomise_all
from going_modular import ViT, create_vit
from going_modular import numpy_vit as nv
from going_modular.checkpoint import CheckpointError, read_safetensors, save_model
from going_modular.special import erfc


def save(model: ViT, directory: Path) -> Path:
    """Save ``model`` as a going_modular checkpoint with minimal metadata."""
    names = [f"class {k}" for k in range(model.config.num_classes)]
    return save_model(
        model, directory, metadata={"class_names": names, "preprocessing": {}}
    )


def max_logit_difference(
    model: ViT, directory: Path, size: tuple[int, int], seed: int = 0
) -> float:
    """Save ``model`` to ``directory``, reload it with NumPy and compare the logits of one random image."""
    save(model, directory)
    hparams, params = nv.load_hparams_and_params(directory)
    image = torch.randn(
        model.config.in_channels, *size, generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        reference = model(image[None])[0].numpy()
    logits = nv.vit(image.numpy(), **params, n_head=hparams["num_heads"])
    assert (
        logits.shape
        == reference.shape
        == (
            model.config.num_classes
            or model.config.representation_size
            or model.config.embed_dim,
        )
    )
    assert logits.dtype == np.float32
    assert logits.argmax() == reference.argmax()
    return float(np.abs(logits - reference).max())


@pytest.fixture(scope="module")
def ti16(tmp_path_factory) -> tuple[ViT, Path]:
    torch.manual_seed(0)
    return randomise_all(
        create_vit("Ti/16", num_classes=10), 0.02
    ), tmp_path_factory.mktemp("ti16") / "ckpt"


@pytest.fixture()
def small_checkpoint(tmp_path) -> Path:
    torch.manual_seed(1)
    model = ViT(
        img_size=16, patch_size=8, num_classes=3, embed_dim=16, depth=1, num_heads=2
    )
    return save(randomise_all(model, 0.02), tmp_path / "ckpt")


# ---- whole model ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [(224, 224), (160, 192)], ids=["224x224", "160x192-interpolated"]
)
def test_vit_ti16_matches_pytorch(ti16, size):
    model, directory = ti16
    assert max_logit_difference(model, directory, size) <= 1e-4


@pytest.mark.parametrize(
    "kwargs, size",
    [
        (
            dict(
                img_size=32,
                patch_size=8,
                embed_dim=64,
                depth=2,
                num_heads=4,
                num_classes=7,
            ),
            (32, 32),
        ),
        (
            dict(
                img_size=28,
                patch_size=14,
                in_channels=1,
                embed_dim=48,
                depth=2,
                num_heads=3,
                num_classes=5,
            ),
            (42, 28),
        ),
        (
            dict(
                img_size=(24, 40),
                patch_size=(4, 8),
                embed_dim=32,
                depth=1,
                num_heads=2,
                num_classes=4,
            ),
            (32, 24),
        ),
        (
            dict(
                img_size=32,
                patch_size=8,
                embed_dim=32,
                depth=2,
                num_heads=2,
                num_classes=5,
                representation_size=24,
                qkv_bias=False,
                layer_norm_eps=1e-5,
                gelu_approximate="tanh",
            ),
            (40, 24),
        ),
        (
            dict(
                img_size=16,
                patch_size=4,
                embed_dim=32,
                depth=1,
                num_heads=2,
                num_classes=0,
            ),
            (16, 16),
        ),
        (
            dict(
                img_size=16,
                patch_size=4,
                embed_dim=32,
                depth=2,
                num_heads=2,
                num_classes=3,
                global_pool="avg",
            ),
            (24, 16),
        ),
    ],
    ids=[
        "P8",
        "P14-one-channel-resized",
        "non-square-patches-and-grid",
        "pre-logits-no-qkv-bias-eps-tanh",
        "no-head",
        "average-pooling-resized",
    ],
)
def test_vit_other_configurations_match_pytorch(tmp_path, kwargs, size):
    torch.manual_seed(2)
    assert (
        max_logit_difference(
            randomise_all(ViT(**kwargs), 0.02), tmp_path / "ckpt", size
        )
        <= 1e-4
    )


def test_load_carries_the_settings_that_change_the_computation(tmp_path):
    model = randomise_all(
        ViT(
            img_size=(16, 24),
            patch_size=8,
            embed_dim=16,
            depth=1,
            num_heads=2,
            num_classes=3,
            layer_norm_eps=1e-5,
            gelu_approximate="tanh",
        ),
        0.02,
    )
    save(model, tmp_path / "ckpt")
    hparams, params = nv.load_hparams_and_params(tmp_path / "ckpt")
    assert hparams == model.config.to_dict()
    assert params["embeddings"]["config_image_size"] == (16, 24)
    assert params["ln_f"]["eps"] == params["encoder_blocks"][0]["ln_1"]["eps"] == 1e-5
    assert params["encoder_blocks"][0]["mlp"]["approximate"] == "tanh"
    np.testing.assert_array_equal(
        params["classifier"]["w"], model.head.weight.detach().numpy().T
    )


# ---- building blocks against torch.nn.functional ---------------------------------------------


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-7), (torch.float32, 2e-6)])
def test_gelu_matches_torch(approximate, dtype, tol):
    x = torch.linspace(-12, 12, 10001, dtype=dtype)
    out = nv.gelu(x.numpy(), approximate)
    assert out.dtype == x.numpy().dtype
    np.testing.assert_allclose(
        out, F.gelu(x, approximate=approximate).numpy(), rtol=tol, atol=tol
    )


@pytest.mark.parametrize(
    "dtype, bound", [(np.float64, 1.2e-7), (np.float32, 1e-5)]
)  # float32: exp of -z^2 rounded
def test_erfc_matches_the_standard_library_on_both_sides_and_leaves_its_input_alone(
    dtype, bound
):
    x = np.linspace(-9, 9, 18001).astype(dtype)  # float32 erfc underflows past 9.2
    before = x.copy()
    out = erfc(x)
    reference = np.array([math.erfc(v) for v in x.astype(np.float64)])
    assert out.dtype == dtype and np.array_equal(x, before)
    np.testing.assert_allclose(out, reference, rtol=bound, atol=0)
    assert float(erfc(np.float64(0.5))) == pytest.approx(
        math.erfc(0.5), rel=1.2e-7
    )  # a 0-d input


def test_erfc_refuses_integers():
    with pytest.raises(TypeError, match="expected an array of floats, got dtype int64"):
        erfc(np.arange(3))


def test_gelu_rejects_unknown_approximation():
    with pytest.raises(ValueError, match="approximate"):
        nv.gelu(np.zeros(3), "erf")


def test_softmax_matches_torch_without_overflow():
    x = torch.randn(4, 6, 9) * 100 + 1000
    for axis in (-1, 0, 1):
        torch.testing.assert_close(
            torch.from_numpy(nv.softmax(x.numpy(), axis=axis)),
            torch.softmax(x, dim=axis),
        )


def test_layer_norm_matches_torch():
    x, g, b = torch.randn(5, 7, 32) * 4 + 2, torch.randn(32), torch.randn(32)
    for eps in (1e-6, 1e-2):
        torch.testing.assert_close(
            torch.from_numpy(nv.layer_norm(x.numpy(), g.numpy(), b.numpy(), eps=eps)),
            F.layer_norm(x, (32,), g, b, eps=eps),
        )


def test_linear_takes_the_transposed_torch_weight():
    x, w, b = torch.randn(3, 5, 8), torch.randn(6, 8), torch.randn(6)
    torch.testing.assert_close(
        torch.from_numpy(nv.linear(x.numpy(), w.numpy().T, b.numpy())),
        F.linear(x, w, b),
    )


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_ffn_matches_torch(approximate):
    x, w1, b1, w2, b2 = (
        torch.randn(9, 16) * 2,
        torch.randn(64, 16) / 4,
        torch.randn(64),
        torch.randn(16, 64) / 8,
        torch.randn(16),
    )
    reference = F.linear(F.gelu(F.linear(x, w1, b1), approximate=approximate), w2, b2)
    ours = nv.ffn(
        x.numpy(),
        {"w": w1.numpy().T, "b": b1.numpy()},
        {"w": w2.numpy().T, "b": b2.numpy()},
        approximate,
    )
    torch.testing.assert_close(torch.from_numpy(ours), reference)


@pytest.mark.parametrize("mask", [None, "bool", "float"])
def test_attention_matches_scaled_dot_product_attention(mask):
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)
    m = {None: None, "bool": torch.rand(5, 7) > 0.3, "float": torch.randn(5, 7)}[mask]
    if mask == "bool":
        m[:, 0] = True  # every query keeps at least one key
    ours = nv.attention(
        q.numpy(), k.numpy(), v.numpy(), None if m is None else m.numpy()
    )
    torch.testing.assert_close(
        torch.from_numpy(ours), F.scaled_dot_product_attention(q, k, v, attn_mask=m)
    )


def test_mha_matches_torch_multihead_attention():
    torch.manual_seed(3)
    layer = torch.nn.MultiheadAttention(
        24, 4, batch_first=True
    ).eval()  # same q, k, v and head packing
    x = torch.randn(1, 11, 24)
    c_attn = {
        "w": layer.in_proj_weight.detach().numpy().T,
        "b": layer.in_proj_bias.detach().numpy(),
    }
    c_proj = {
        "w": layer.out_proj.weight.detach().numpy().T,
        "b": layer.out_proj.bias.detach().numpy(),
    }
    with torch.no_grad():
        reference = layer(x, x, x, need_weights=False)[0][0]
    torch.testing.assert_close(
        torch.from_numpy(nv.mha(x[0].numpy(), c_attn, c_proj, n_head=4)), reference
    )


def test_mha_rejects_heads_that_do_not_divide_the_width():
    dense = {"w": np.zeros((6, 18)), "b": np.zeros(18)}
    with pytest.raises(ValueError, match="divisible"):
        nv.mha(
            np.zeros((3, 6)), dense, {"w": np.zeros((6, 6)), "b": np.zeros(6)}, n_head=4
        )


@pytest.mark.parametrize(
    "kernel, stride", [((4, 4), 4), ((3, 5), 1), ((3, 3), (2, 3)), ((2, 6), (3, 2))]
)
@pytest.mark.parametrize("with_bias", [True, False])
def test_convolution_2d_matches_conv2d(kernel, stride, with_bias):
    x, w, b = torch.randn(3, 17, 23), torch.randn(5, 3, *kernel), torch.randn(5)
    ours = nv.convolution_2d(
        x.numpy(), w.numpy(), b.numpy() if with_bias else None, stride=stride
    )
    torch.testing.assert_close(
        torch.from_numpy(ours), F.conv2d(x, w, b if with_bias else None, stride=stride)
    )


@pytest.mark.parametrize(
    "old, new",
    [
        ((14, 14), (24, 24)),
        ((14, 14), (5, 3)),
        ((10, 12), (14, 14)),
        ((7, 9), (13, 4)),
        ((1, 5), (4, 2)),
        ((6, 6), (6, 6)),
    ],
)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_resize_bicubic_matches_interpolate(old, new, dtype, tol):
    grid = torch.randn(
        1, 6, *old, dtype=dtype
    )  # (1, C, H, W) for torch, (H, W, C) for NumPy
    reference = F.interpolate(
        grid, size=new, mode="bicubic", align_corners=False, antialias=False
    )[0]
    ours = nv.resize_bicubic(grid[0].permute(1, 2, 0).numpy(), *new)
    assert ours.dtype == grid.numpy().dtype
    torch.testing.assert_close(
        torch.from_numpy(ours), reference.permute(1, 2, 0), rtol=tol, atol=tol
    )


def test_vit_interpolation_keeps_the_class_row_and_resizes_the_grid():
    pos = np.random.default_rng(0).normal(size=(1 + 4 * 6, 5)).astype(np.float32)
    out = nv.vit_interpolation(
        pos, img_size=(24, 16), patch_size=4, config_image_size=(16, 24)
    )
    assert out.shape == (1 + 6 * 4, 5)
    np.testing.assert_array_equal(out[0], pos[0])
    np.testing.assert_allclose(
        out[1:].reshape(6, 4, 5), nv.resize_bicubic(pos[1:].reshape(4, 6, 5), 6, 4)
    )
    assert nv.vit_interpolation(pos, (16, 24), 4, (16, 24)) is pos


def test_vit_embeddings_assumes_a_square_training_grid_when_not_told(small_checkpoint):
    embeddings = dict(nv.load_hparams_and_params(small_checkpoint)[1]["embeddings"])
    trained = embeddings.pop("config_image_size")
    image = np.random.default_rng(0).normal(size=(3, 24, 32)).astype(np.float32)
    z_0 = nv.vit_embeddings(image, **embeddings)
    assert z_0.shape == (1 + 3 * 4, 16)
    np.testing.assert_array_equal(
        z_0, nv.vit_embeddings(image, **embeddings, config_image_size=trained)
    )


# ---- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 3, 16, 16), "shape"),
        ((16, 16), "shape"),
        ((3, 16, 20), "multiples"),
        ((3, 12, 16), "multiples"),
        ((1, 16, 16), "channels"),
    ],
)
def test_vit_rejects_bad_images(small_checkpoint, shape, message):
    hparams, params = nv.load_hparams_and_params(small_checkpoint)
    with pytest.raises(ValueError, match=message):
        nv.vit(np.zeros(shape, np.float32), **params, n_head=hparams["num_heads"])


def test_vit_rejects_non_real_images(small_checkpoint):
    hparams, params = nv.load_hparams_and_params(small_checkpoint)
    with pytest.raises(TypeError, match="real"):
        nv.vit(
            np.zeros((3, 16, 16), np.complex64), **params, n_head=hparams["num_heads"]
        )


def test_load_accepts_the_directory_either_file_and_vit_model_path(
    small_checkpoint, monkeypatch
):
    expected = nv.load_hparams_and_params(small_checkpoint)[1]["classifier"]["w"]
    for path in (
        small_checkpoint / "config.json",
        small_checkpoint / "model.safetensors",
        str(small_checkpoint),
    ):
        np.testing.assert_array_equal(
            nv.load_hparams_and_params(path)[1]["classifier"]["w"], expected
        )
    monkeypatch.setenv("VIT_MODEL_PATH", str(small_checkpoint))
    np.testing.assert_array_equal(
        nv.load_hparams_and_params()[1]["classifier"]["w"], expected
    )


def test_load_without_path_or_vit_model_path(monkeypatch):
    monkeypatch.delenv("VIT_MODEL_PATH", raising=False)
    with pytest.raises(ValueError, match="VIT_MODEL_PATH"):
        nv.load_hparams_and_params()


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors"])
def test_load_missing_files(small_checkpoint, missing):
    (small_checkpoint / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        nv.load_hparams_and_params(small_checkpoint)
    with pytest.raises(FileNotFoundError):
        nv.load_hparams_and_params(small_checkpoint.parent / "nowhere")


@pytest.mark.parametrize(
    "edit, error, message",
    [
        (lambda c: c.update(format="timm"), CheckpointError, "format"),
        (lambda c: c.update(version=2), CheckpointError, "version"),
        (lambda c: c["model"].pop("num_heads"), CheckpointError, "num_heads"),
        (lambda c: c["model"].update(depth=2), ValueError, "blocks.1"),
        (lambda c: c["model"].update(depth=0), ValueError, "does not use"),
        (lambda c: c["model"].update(conv_stem=True), NotImplementedError, "conv_stem"),
    ],
)
def test_load_rejects_configs_that_do_not_fit(small_checkpoint, edit, error, message):
    edit_config(small_checkpoint, edit)
    with pytest.raises(error, match=message):
        nv.load_hparams_and_params(small_checkpoint)


def test_load_rejects_malformed_json(small_checkpoint):
    (small_checkpoint / "config.json").write_text('{"format": "going_modular.vit", ')
    with pytest.raises(CheckpointError, match="JSON"):
        nv.load_hparams_and_params(small_checkpoint)


def test_load_rejects_malformed_safetensors(small_checkpoint):
    """The NumPy loader goes through checkpoint.read_safetensors; its every malformed case is tested there."""
    file = small_checkpoint / "model.safetensors"
    file.write_bytes(corrupt(file.read_bytes(), "bad-offsets"))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        nv.load_hparams_and_params(small_checkpoint)


def test_read_safetensors_reads_every_dtype(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "f64": rng.normal(size=(2, 3)),
        "f32": rng.normal(size=(4,)).astype(np.float32),
        "f16": rng.normal(size=(3, 1)).astype(np.float16),
        "i64": np.arange(6).reshape(2, 3),
        "u8": np.arange(5, dtype=np.uint8),
        "bool": np.array([True, False]),
        "scalar": np.array(2.5, np.float32),
    }
    save_numpy_safetensors(
        arrays, tmp_path / "a.safetensors", metadata={"note": "kept out of the tensors"}
    )
    read = read_safetensors(tmp_path / "a.safetensors")
    assert read.keys() == arrays.keys()
    for name, array in arrays.items():
        assert read[name].dtype == array.dtype and read[name].shape == array.shape
        np.testing.assert_array_equal(read[name], array)


def test_read_safetensors_widens_bfloat16(tmp_path):
    from safetensors.torch import save_file

    x = torch.randn(3, 4).to(torch.bfloat16)
    save_file({"x": x}, tmp_path / "b.safetensors")
    read = read_safetensors(tmp_path / "b.safetensors")["x"]
    assert read.dtype == np.float32
    np.testing.assert_array_equal(read, x.float().numpy())


@pytest.mark.slow
def test_module_imports_only_numpy_and_the_standard_library(small_checkpoint):
    """numpy_vit and the checkpoint reader it uses import no torch, safetensors or scipy, even while they work."""
    code = (
        "import sys, going_modular.numpy_vit as nv; hparams, params = nv.load_hparams_and_params(sys.argv[1]); "
        "print(sorted(m for m in ('torch', 'safetensors', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(small_checkpoint)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "[]"


def test_the_loader_shares_the_checkpoint_module_reader():
    """One reader, one strictness: numpy_vit keeps no copy of the format's constants or of the reader."""
    from going_modular import checkpoint

    assert nv.read_checkpoint is checkpoint.read_checkpoint
    for name in (
        "read_safetensors",
        "CHECKPOINT_FORMAT",
        "CHECKPOINT_VERSION",
        "_SAFETENSORS_DTYPES",
    ):
        assert not hasattr(nv, name), name
