"""Our ViT computes the same function as torchvision's and timm's on the same weights."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import timm
import torch
import torchvision
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torchvision.models.vision_transformer import ConvStemConfig, VisionTransformer

from conftest import randomise_all, randomise_head
from going_modular import (
    StateDictMismatchError,
    ViT,
    ViTConfig,
    create_vit,
    jax_npz_config,
    load_jax_npz,
    load_timm_state_dict,
    load_torchvision_state_dict,
    resize_position_embedding,
    to_timm_state_dict,
    to_torchvision_state_dict,
)

# A two-block ViT on 32-pixel images with five classes, small enough to port in milliseconds.
CONFIG = ViTConfig(
    img_size=32, patch_size=8, num_classes=5, embed_dim=32, depth=2, num_heads=2
)


def max_difference(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        out_a, out_b = a.eval()(x), b.eval()(x)
    assert out_a.abs().max() > 1e-2  # the comparison is not between zeros
    return (out_a - out_b).abs().max().item()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def test_torchvision_vit_b_16_logits_match(images):
    torch.manual_seed(0)
    reference = torchvision.models.vit_b_16()
    randomise_head(reference)
    ours = load_torchvision_state_dict(create_vit("B/16"), reference.state_dict())
    assert max_difference(ours, reference, images) <= 1e-4


@pytest.mark.parametrize(
    "timm_name, name",
    [("vit_tiny_patch16_224", "Ti/16"), ("vit_base_patch16_224", "B/16")],
)
def test_timm_logits_match(images, timm_name, name):
    torch.manual_seed(0)
    reference = timm.create_model(timm_name)
    randomise_head(reference)
    ours = load_timm_state_dict(create_vit(name), reference.state_dict())
    assert max_difference(ours, reference, images) <= 1e-4


def test_export_to_torchvision_and_timm_drives_them_to_our_logits(images):
    torch.manual_seed(0)
    ours = create_vit("Ti/16")
    randomise_head(ours)
    tv = VisionTransformer(
        image_size=224,
        patch_size=16,
        num_layers=12,
        num_heads=3,
        hidden_dim=192,
        mlp_dim=768,
    )
    tv.load_state_dict(to_torchvision_state_dict(ours))
    tm = timm.create_model("vit_tiny_patch16_224")
    tm.load_state_dict(to_timm_state_dict(ours))
    assert max_difference(ours, tv, images) <= 1e-4
    assert max_difference(ours, tm, images) <= 1e-4


@pytest.mark.parametrize(
    "export, load",
    [
        (to_torchvision_state_dict, load_torchvision_state_dict),
        (to_timm_state_dict, load_timm_state_dict),
    ],
)
def test_round_trip_is_exact(export, load):
    torch.manual_seed(0)
    source = ViT(CONFIG)
    target = load(ViT(source.config), export(source))
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_torchvision_conv_stem_and_pre_logits_port():
    torch.manual_seed(0)
    reference = VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=5,
        representation_size=16,
        conv_stem_configs=[
            ConvStemConfig(out_channels=w, kernel_size=3, stride=2) for w in (4, 8, 16)
        ],
    )
    randomise_head(reference)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    ours = ViT(CONFIG, mlp_ratio=2.0, representation_size=16, conv_stem=True)
    load_torchvision_state_dict(ours, reference.state_dict())
    assert max_difference(ours, reference, torch.randn(3, 3, 32, 32)) <= 1e-4
    assert set(to_torchvision_state_dict(ours)) == set(reference.state_dict())


def test_old_torchvision_mlp_names_are_accepted():
    source = ViT(CONFIG)
    old = {
        key.replace(".mlp.0.", ".mlp.linear_1.").replace(
            ".mlp.3.", ".mlp.linear_2."
        ): value
        for key, value in to_torchvision_state_dict(source).items()
    }
    assert any(".mlp.linear_1." in key for key in old)
    target = load_torchvision_state_dict(ViT(source.config), old)
    assert torch.equal(target.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)


def test_mismatches_are_all_listed_and_nothing_is_copied():
    small = ViT(CONFIG)
    state = to_timm_state_dict(ViT(CONFIG, num_classes=7, depth=3))
    del state["norm.bias"]
    before = {k: v.clone() for k, v in small.state_dict().items()}
    with pytest.raises(StateDictMismatchError) as caught:
        load_timm_state_dict(small, state)
    err = caught.value
    assert err.missing == ["norm.bias"]
    assert "blocks.2.attn.qkv.weight" in err.unexpected and len(err.unexpected) == 12
    assert err.mismatched == [
        "head.weight (expected (5, 32), got (7, 32))",
        "head.bias (expected (5,), got (7,))",
    ]
    message = str(err)
    assert (
        "missing keys (1): norm.bias" in message
        and "unexpected keys (12)" in message
        and "wrong shapes (2)" in message
    )
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())


def test_a_module_instead_of_a_state_dict_is_a_type_error():
    with pytest.raises(
        TypeError,
        match=r"expected a state dict \(a mapping of names to tensors\), got function$",
    ):
        load_torchvision_state_dict(
            create_vit("Ti/16", img_size=32), torchvision.models.vit_b_16
        )
    with pytest.raises(
        TypeError, match=r"got VisionTransformer: pass module.state_dict\(\)"
    ):
        load_timm_state_dict(
            ViT(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2),
            VisionTransformer(32, 8, 1, 2, 32, 64),
        )


def test_timm_layout_has_no_conv_stem_or_pre_logits():
    for options in ({"conv_stem": True}, {"representation_size": 8}):
        model = ViT(
            img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, **options
        )
        with pytest.raises(ValueError, match="no counterpart in timm's ViT"):
            to_timm_state_dict(model)


# The original JAX checkpoints (.npz). The layout below is written from the format's description
# (Flax module paths; dense kernels (in, out), attention kernels (D, heads, D_h) and (heads, D_h, D),
# the patch kernel (P, P, C, D)), not from our loader, and timm's `load_pretrained` is the reference.
def jax_arrays(
    *,
    d=48,
    depth=2,
    heads=3,
    mlp=96,
    patch=8,
    grid=4,
    classes=7,
    representation=None,
    seed=0,
):
    rng = np.random.default_rng(seed)

    def draw(*shape):
        return rng.normal(scale=0.5, size=shape).astype(np.float32)

    arrays = {
        "embedding/kernel": draw(patch, patch, 3, d),
        "embedding/bias": draw(d),
        "cls": draw(1, 1, d),
        "Transformer/posembed_input/pos_embedding": draw(1, 1 + grid * grid, d),
        "Transformer/encoder_norm/scale": draw(d),
        "Transformer/encoder_norm/bias": draw(d),
    }
    for i in range(depth):
        block = f"Transformer/encoderblock_{i}/"
        for norm in ("LayerNorm_0", "LayerNorm_2"):
            arrays[f"{block}{norm}/scale"], arrays[f"{block}{norm}/bias"] = (
                draw(d),
                draw(d),
            )
        for name in ("query", "key", "value"):
            arrays[f"{block}MultiHeadDotProductAttention_1/{name}/kernel"] = draw(
                d, heads, d // heads
            )
            arrays[f"{block}MultiHeadDotProductAttention_1/{name}/bias"] = draw(
                heads, d // heads
            )
        arrays[f"{block}MultiHeadDotProductAttention_1/out/kernel"] = draw(
            heads, d // heads, d
        )
        arrays[f"{block}MultiHeadDotProductAttention_1/out/bias"] = draw(d)
        for dense, (n_in, n_out) in (("Dense_0", (d, mlp)), ("Dense_1", (mlp, d))):
            (
                arrays[f"{block}MlpBlock_3/{dense}/kernel"],
                arrays[f"{block}MlpBlock_3/{dense}/bias"],
            ) = (
                draw(n_in, n_out),
                draw(n_out),
            )
    features = d
    if representation:
        arrays["pre_logits/kernel"], arrays["pre_logits/bias"] = (
            draw(d, representation),
            draw(representation),
        )
        features = representation
    arrays["head/kernel"], arrays["head/bias"] = draw(features, classes), draw(classes)
    return arrays


def write_npz(folder, arrays, name="ViT.npz"):
    path = folder / name
    np.savez(path, **arrays)
    return path


def timm_from_npz(
    path, *, num_classes, img_size=32, patch=8, d=48, depth=2, heads=3, mlp_ratio=2.0
):
    model = TimmViT(
        img_size=img_size,
        patch_size=patch,
        embed_dim=d,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp_ratio,
        num_classes=num_classes,
        act_layer=functools.partial(torch.nn.GELU, approximate="tanh"),
    ).eval()
    model.load_pretrained(str(path))
    return model


def test_jax_npz_logits_match_timms_loader(tmp_path):
    path = write_npz(tmp_path, jax_arrays(classes=7))
    config = jax_npz_config(path)
    assert config == ViTConfig(
        img_size=32,
        patch_size=8,
        in_channels=3,
        num_classes=7,
        embed_dim=48,
        depth=2,
        num_heads=3,
        mlp_ratio=2.0,
        qkv_bias=True,
        representation_size=None,
        gelu_approximate="tanh",
    )
    ours = load_jax_npz(ViT(config), path).eval()
    reference = timm_from_npz(path, num_classes=7)
    assert max_difference(ours, reference, torch.randn(3, 3, 32, 32)) <= 1e-4


def test_jax_npz_with_pre_logits_matches_timm_features_and_the_files_dense_layers(
    tmp_path,
):
    arrays = jax_arrays(classes=5, representation=24)
    path = write_npz(tmp_path, arrays)
    ours = load_jax_npz(ViT(jax_npz_config(path)), path).eval()
    assert ours.config.representation_size == 24
    reference = timm_from_npz(
        path, num_classes=0
    )  # timm drops pre-logits: it stops at y = LN(z_L^0)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        y = reference(x).numpy()
        logits = ours(x).numpy()
    expected = np.tanh(y @ arrays["pre_logits/kernel"] + arrays["pre_logits/bias"])
    expected = expected @ arrays["head/kernel"] + arrays["head/bias"]
    assert np.abs(expected).max() > 1e-2
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


def test_jax_npz_with_another_grid_resizes_the_position_embeddings(tmp_path):
    arrays = jax_arrays(grid=4)
    path = write_npz(tmp_path, arrays)
    model = load_jax_npz(ViT(jax_npz_config(path), img_size=48), path)
    position = torch.from_numpy(arrays["Transformer/posembed_input/pos_embedding"])
    assert model.position_embedding.shape == (1, 1 + 6 * 6, 48)
    torch.testing.assert_close(
        model.position_embedding.data,
        resize_position_embedding(position, (4, 4), (6, 6)),
    )
    torch.testing.assert_close(model.class_token.data, torch.from_numpy(arrays["cls"]))


def test_jax_npz_that_does_not_fit_lists_every_problem(tmp_path):
    arrays = jax_arrays()
    del arrays["Transformer/encoderblock_1/LayerNorm_2/bias"]
    arrays["Transformer/encoderblock_2/LayerNorm_0/scale"] = np.zeros(48, np.float32)
    arrays["head/kernel"] = np.zeros((48, 9), np.float32)
    path = write_npz(tmp_path, arrays)
    model = ViT(jax_npz_config(path), depth=2, num_classes=7)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(StateDictMismatchError) as error:
        load_jax_npz(model, path)
    message = str(error.value)
    assert "missing keys (1): Transformer/encoderblock_1/LayerNorm_2/bias" in message
    assert (
        "unexpected keys (1): Transformer/encoderblock_2/LayerNorm_0/scale" in message
    )
    assert "head/kernel (expected (48, 7), got (48, 9))" in message
    assert all(
        torch.equal(before[key], value) for key, value in model.state_dict().items()
    )


def test_jax_npz_into_an_exact_gelu_model_warns(tmp_path):
    path = write_npz(tmp_path, jax_arrays())
    with pytest.warns(UserWarning, match="tanh GELU"):
        load_jax_npz(ViT(jax_npz_config(path), gelu_approximate="none"), path)


def test_jax_npz_bad_files_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        jax_npz_config(tmp_path / "missing.npz")
    not_npz = tmp_path / "weights.npz"
    not_npz.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="expected an .npz archive"):
        jax_npz_config(not_npz)
    other = write_npz(tmp_path, {"a": np.zeros(3)}, name="other.npz")
    with pytest.raises(ValueError, match="not a JAX ViT checkpoint"):
        jax_npz_config(other)
    with pytest.raises(ValueError, match="convolutional stem"):
        load_jax_npz(
            ViT(
                img_size=32,
                patch_size=8,
                embed_dim=48,
                depth=2,
                num_heads=3,
                conv_stem=True,
            ),
            other,
        )


def test_average_pooling_ports_to_timms_avg_model_without_fc_norm_and_not_to_torchvision():
    torch.manual_seed(0)
    ours = randomise_all(ViT(CONFIG, global_pool="avg"), std=0.1)
    reference = TimmViT(
        img_size=32,
        patch_size=8,
        num_classes=5,
        embed_dim=32,
        depth=2,
        num_heads=2,
        global_pool="avg",
        fc_norm=False,
    )
    reference.load_state_dict(to_timm_state_dict(ours))
    assert max_difference(ours, reference, torch.randn(2, 3, 32, 32)) <= 1e-5
    loaded = load_timm_state_dict(
        ViT(CONFIG, global_pool="avg"), reference.state_dict()
    )
    assert max_difference(loaded, reference, torch.randn(2, 3, 32, 32)) <= 1e-5
    with pytest.raises(ValueError, match="torchvision's ViT reads the class token"):
        to_torchvision_state_dict(ours)
