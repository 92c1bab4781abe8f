"""Unit tests of going_modular.vit: shapes, numerics against PyTorch's own layers, errors, counts."""

from __future__ import annotations

import json
import re
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.vision_transformer import (
    EncoderBlock as TorchvisionEncoderBlock,
)

from conftest import randomise_head
from going_modular import (
    MLP,
    ConvStem,
    DropPath,
    EncoderBlock,
    MultiHeadSelfAttention,
    PatchEmbedding,
    ViT,
    ViTConfig,
    count_macs,
    count_parameters,
    create_vit,
    patchify,
    resize_position_embedding,
)

SMALL = ViTConfig(
    img_size=32, patch_size=4, num_classes=10, embed_dim=48, depth=2, num_heads=3
)


# ---- patches and Equation 1 ---------------------------------------------------------------------


def test_patchify_matches_unfold_in_raster_order():
    x = torch.randn(2, 3, 32, 48)
    patches = patchify(x, 8)
    assert patches.shape == (2, 4 * 6, 3 * 8 * 8)
    assert torch.equal(patches, F.unfold(x, kernel_size=8, stride=8).transpose(1, 2))
    assert torch.equal(
        patches[1, 7], x[1, :, 8:16, 8:16].flatten()
    )  # row 1, column 1 of a 6-wide grid


def test_patchify_accepts_rectangular_patches():
    assert patchify(torch.randn(1, 1, 12, 20), (3, 5)).shape == (1, 16, 15)


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.zeros(3, 32, 32), "4-D"),
        (torch.zeros(1, 3, 30, 32), "multiples of the patch size"),
    ],
)
def test_patchify_rejects_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        patchify(bad, 16)


def test_patch_embedding_is_a_linear_layer_over_flattened_patches():
    torch.manual_seed(0)
    embed = PatchEmbedding(patch_size=8, in_channels=3, embed_dim=24)
    x = torch.randn(2, 3, 32, 16)
    linear = nn.Linear(3 * 8 * 8, 24)
    with torch.no_grad():
        linear.weight.copy_(embed.proj.weight.reshape(24, -1))
        linear.bias.copy_(embed.proj.bias)
    torch.testing.assert_close(embed(x), linear(patchify(x, 8)), rtol=1e-5, atol=1e-5)


def test_conv_stem_shapes_and_widths():
    stem = ConvStem(patch_size=16, in_channels=3, embed_dim=192)
    widths = [m.out_channels for m in stem if isinstance(m, nn.Conv2d)]
    assert widths == [12, 24, 48, 96, 192]
    assert stem(torch.randn(2, 3, 64, 32)).shape == (2, 192, 4, 2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(patch_size=12, embed_dim=192), "power of two"),
        (dict(patch_size=16, embed_dim=8), "embed_dim >= 16"),
    ],
)
def test_conv_stem_rejects_impossible_configurations(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConvStem(**kwargs)


def test_resize_position_embedding_matches_bicubic_interpolation_and_keeps_class_row():
    pos = torch.randn(1, 1 + 4 * 6, 8)
    resized = resize_position_embedding(pos, (4, 6), (7, 5))
    assert resized.shape == (1, 1 + 35, 8)
    assert torch.equal(resized[:, 0], pos[:, 0])
    grid = pos[:, 1:].reshape(1, 4, 6, 8).permute(0, 3, 1, 2)
    expected = (
        F.interpolate(grid, size=(7, 5), mode="bicubic", align_corners=False)
        .permute(0, 2, 3, 1)
        .reshape(1, 35, 8)
    )
    torch.testing.assert_close(resized[:, 1:], expected)
    assert resize_position_embedding(pos, (4, 6), (4, 6)) is pos


def test_resize_position_embedding_keeps_a_constant_embedding_constant():
    pos = torch.full((1, 1 + 9, 4), 0.5)
    torch.testing.assert_close(
        resize_position_embedding(pos, (3, 3), (5, 8)), torch.full((1, 41, 4), 0.5)
    )


def test_resize_position_embedding_linear_mode_is_the_original_jax_zoom():
    """The original code resizes with scipy.ndimage.zoom(order=1): linear, with the corners aligned."""
    pos = torch.randn(1, 1 + 4 * 6, 8, dtype=torch.float64)
    resized = resize_position_embedding(
        pos, (4, 6), (7, 9), mode="bilinear", align_corners=True
    )
    grid = pos[0, 1:].reshape(4, 6, 8).numpy()
    expected = ndimage.zoom(grid, (7 / 4, 9 / 6, 1), order=1)  # (7, 9, 8)
    np.testing.assert_allclose(
        resized[0, 1:].reshape(7, 9, 8).numpy(), expected, atol=1e-12
    )
    with pytest.raises(
        ValueError, match="mode must be 'bicubic' or 'bilinear', got 'nearest'"
    ):
        resize_position_embedding(pos, (4, 6), (7, 9), mode="nearest")


def test_resize_position_embedding_rejects_wrong_shape():
    with pytest.raises(
        ValueError,
        match=r"expected a position embedding of shape \(1, 1 \+ 4\*4, D\), got \(1, 10, 8\)",
    ):
        resize_position_embedding(torch.zeros(1, 10, 8), (4, 4), (5, 5))


# ---- Equations 2 and 3 -----------------------------------------------------------------------------


def test_msa_matches_torch_multihead_attention_outputs_and_weights():
    torch.manual_seed(0)
    msa = MultiHeadSelfAttention(embed_dim=32, num_heads=4).eval()
    reference = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    with torch.no_grad():
        reference.in_proj_weight.copy_(msa.qkv.weight)
        reference.in_proj_bias.copy_(msa.qkv.bias)
        reference.out_proj.weight.copy_(msa.proj.weight)
        reference.out_proj.bias.copy_(msa.proj.bias)
    x = torch.randn(3, 11, 32)
    expected, expected_weights = reference(
        x, x, x, need_weights=True, average_attn_weights=False
    )
    out, weights = msa(x), msa.attention_weights(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights, expected_weights, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 11))


def test_msa_without_qkv_bias_has_no_bias():
    assert (
        MultiHeadSelfAttention(embed_dim=16, num_heads=2, qkv_bias=False).qkv.bias
        is None
    )


def test_msa_rejects_embed_dim_not_divisible_by_heads():
    with pytest.raises(ValueError, match="embed_dim=30, num_heads=4"):
        MultiHeadSelfAttention(embed_dim=30, num_heads=4)


def test_attention_dropout_only_in_training():
    torch.manual_seed(0)
    msa = MultiHeadSelfAttention(embed_dim=16, num_heads=2, attn_drop=0.5)
    x = torch.randn(2, 5, 16)
    msa.eval()
    assert torch.equal(msa(x), msa(x))
    msa.train()
    assert not torch.equal(msa(x), msa(x))
    assert torch.equal(
        msa.attention_weights(x), msa.attention_weights(x)
    )  # the maps are never dropped


def test_mlp_shapes_and_gelu_forms():
    torch.manual_seed(0)
    exact, approx = (
        MLP(embed_dim=8, hidden_dim=32),
        MLP(embed_dim=8, hidden_dim=32, gelu_approximate="tanh"),
    )
    approx.load_state_dict(exact.state_dict())
    x = torch.randn(2, 3, 8) * 3
    assert exact(x).shape == (2, 3, 8)
    torch.testing.assert_close(exact(x), exact.fc2(F.gelu(exact.fc1(x))))
    torch.testing.assert_close(
        approx(x), exact.fc2(F.gelu(exact.fc1(x), approximate="tanh"))
    )
    assert not torch.equal(exact(x), approx(x))


def test_drop_path_drops_whole_samples_and_preserves_the_mean():
    torch.manual_seed(0)
    drop = DropPath(p=0.3)
    out = drop(torch.ones(50_000, 3))
    rows = out[:, 0]
    assert torch.all((out == 0).all(1) | (out == 1 / 0.7).all(1))
    assert abs(rows.mean().item() - 1.0) < 0.02
    x = torch.randn(4, 3)
    assert drop.eval()(x) is x


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_drop_path_rejects_bad_probability(p):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        DropPath(p=p)


def test_encoder_block_matches_torchvision():
    torch.manual_seed(0)
    block = EncoderBlock(embed_dim=32, num_heads=4, mlp_ratio=2.0).eval()
    reference = TorchvisionEncoderBlock(
        4, 32, 64, 0.0, 0.0, partial(nn.LayerNorm, eps=1e-6)
    ).eval()
    renames = {
        "msa.qkv.weight": "self_attention.in_proj_weight",
        "msa.qkv.bias": "self_attention.in_proj_bias",
        "msa.proj.": "self_attention.out_proj.",
        "mlp.fc1.": "mlp.0.",
        "mlp.fc2.": "mlp.3.",
    }
    state = {}
    for key, value in block.state_dict().items():
        for ours, theirs in renames.items():
            key = key.replace(ours, theirs)
        state[key] = value
    reference.load_state_dict(state)
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        torch.testing.assert_close(block(x), reference(x), rtol=1e-5, atol=1e-5)


# ---- the full model ----------------------------------------------------------------------------------


def test_default_vit_is_b16_with_1000_logits():
    with torch.device(
        "meta"
    ):  # shapes and counts without allocating or computing anything
        model = ViT().eval()
        assert model(torch.empty(1, 3, 224, 224)).shape == (1, 1000)
        assert model.config == create_vit("B/16").config
    assert sum(p.numel() for p in model.parameters()) == 86_567_656


def test_initialisation_follows_the_reference_implementations():
    torch.manual_seed(0)
    model = ViT(SMALL, embed_dim=96).eval()
    assert (
        torch.count_nonzero(model.head.weight) == 0
        and torch.count_nonzero(model.head.bias) == 0
    )
    assert torch.count_nonzero(model.class_token) == 0
    assert 0.015 < model.position_embedding.std().item() < 0.025
    with torch.no_grad():
        assert torch.count_nonzero(model(torch.randn(2, 3, 32, 32))) == 0


def test_forward_is_forward_head_of_forward_features_and_maps_are_the_blocks_attention():
    torch.manual_seed(0)
    model = randomise_head(ViT(SMALL), std=0.1).eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        logits, maps = model(x), model.forward_attention(x)
        assert torch.equal(model.forward_head(features), logits)
        z = model.embed(
            x
        )  # the maps, block by block, from nn.MultiheadAttention with the same weights
        for block, A_l in zip(model.blocks, maps, strict=True):
            reference = nn.MultiheadAttention(48, 3, batch_first=True)
            reference.in_proj_weight.copy_(block.msa.qkv.weight)
            reference.in_proj_bias.copy_(block.msa.qkv.bias)
            normed = block.ln_1(z)
            _, expected = reference(
                normed, normed, normed, need_weights=True, average_attn_weights=False
            )
            torch.testing.assert_close(A_l, expected, rtol=1e-5, atol=1e-5)
            z = block(z)
    assert features.shape == (5, 65, 48) and logits.shape == (5, 10)
    assert len(maps) == 2 and all(m.shape == (5, 3, 65, 65) for m in maps)


def test_forward_features_and_forward_head_match_timm():
    timm = pytest.importorskip("timm")
    from going_modular import to_timm_state_dict

    torch.manual_seed(0)
    ours = randomise_head(ViT(SMALL), std=0.1).eval()
    theirs = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=4, num_classes=10, embed_dim=48, depth=2, num_heads=3
    ).eval()
    theirs.load_state_dict(to_timm_state_dict(ours))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            ours.forward_features(x), theirs.forward_features(x), rtol=1e-5, atol=1e-5
        )
        z = ours.forward_features(x)
        torch.testing.assert_close(
            ours.forward_head(z), theirs.forward_head(z), rtol=1e-5, atol=1e-5
        )
        # timm resizes with antialias=True, whose bicubic kernel (a = -0.5) is not the plain one (a = -0.75)
        # that torchvision and this package use; with antialias=False its resampler is ours.
        expected = timm.layers.resample_abs_pos_embed(
            ours.position_embedding,
            new_size=(12, 12),
            old_size=(8, 8),
            num_prefix_tokens=1,
            antialias=False,
        )
        ours.set_input_size(48)
        theirs.set_input_size(img_size=(48, 48))
        theirs.pos_embed.copy_(expected)
        big = torch.randn(2, 3, 48, 48)
        torch.testing.assert_close(
            ours.position_embedding.data, expected, rtol=1e-6, atol=1e-6
        )
        torch.testing.assert_close(ours(big), theirs(big), rtol=1e-5, atol=1e-5)
    ours.reset_classifier(4)
    theirs.reset_classifier(4)
    assert ours.head.weight.shape == theirs.head.weight.shape == (4, 48)


def test_reset_classifier_is_a_zero_head_without_pre_logits():
    torch.manual_seed(0)
    model = randomise_head(ViT(SMALL, representation_size=20), std=0.1).eval()
    features = model.forward_features(torch.randn(2, 3, 32, 32))
    model.reset_classifier(7)
    assert isinstance(model.pre_logits, nn.Identity) and model.head.weight.shape == (
        7,
        48,
    )
    assert torch.count_nonzero(model.forward_head(features)) == 0
    assert (model.config.num_classes, model.config.representation_size) == (7, None)
    model.reset_classifier(0, global_pool="avg")
    assert isinstance(model.head, nn.Identity) and model.config.global_pool == "avg"
    with torch.no_grad():
        torch.testing.assert_close(
            model.forward_head(features), features[:, 1:].mean(dim=1)
        )
    with pytest.raises(ValueError, match="num_classes must be an int >= 0"):
        model.reset_classifier(-1)
    with pytest.raises(ValueError, match="global_pool must be"):
        model.reset_classifier(3, global_pool="max")


def test_set_input_size_stores_the_resized_position_embedding():
    torch.manual_seed(0)
    model = randomise_head(ViT(SMALL), std=0.1).eval()
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        on_the_fly = model(x)
        expected = resize_position_embedding(model.position_embedding, (8, 8), (12, 10))
        model.set_input_size((48, 40))
        torch.testing.assert_close(model(x), on_the_fly)
    assert torch.equal(model.position_embedding.data, expected)
    assert model.grid_size == (12, 10) and model.config.img_size == (48, 40)
    with pytest.raises(ValueError, match="img_size must be a multiple of patch_size"):
        model.set_input_size(30)
    assert model.config.img_size == (48, 40)  # a refused size changes nothing


def test_other_image_size_uses_resized_position_embeddings():
    torch.manual_seed(0)
    model = randomise_head(ViT(SMALL), std=0.1).eval()
    x = torch.randn(2, 3, 48, 40)
    resized = ViT(SMALL, img_size=(48, 40)).eval()
    state = model.state_dict()
    state["position_embedding"] = resize_position_embedding(
        model.position_embedding.detach(), (8, 8), (12, 10)
    )
    resized.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(model(x), resized(x))
    assert model.position_embedding.shape == (
        1,
        65,
        48,
    )  # the stored parameter keeps its size


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"conv_stem": True, "patch_size": 4},
        {"representation_size": 20},
        {"qkv_bias": False, "gelu_approximate": "tanh"},
    ],
)
def test_gradients_reach_every_parameter(options):
    torch.manual_seed(0)
    model = randomise_head(ViT(SMALL, **options), std=0.1).train()
    loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    without = [
        name
        for name, p in model.named_parameters()
        if p.grad is None or not torch.any(p.grad != 0)
    ]
    assert without == []


def test_same_seed_same_model_and_same_training_forward():
    def run() -> tuple[dict, torch.Tensor]:
        torch.manual_seed(123)
        model = ViT(
            SMALL, drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2
        ).train()
        return model.state_dict(), model(torch.randn(3, 3, 32, 32))

    (state_a, out_a), (state_b, out_b) = run(), run()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert torch.equal(out_a, out_b)


def test_drop_path_rates_rise_linearly_to_the_last_block():
    model = ViT(SMALL, depth=5, drop_path_rate=0.2)
    assert [round(b.drop_path1.p, 6) for b in model.blocks] == [
        0.0,
        0.05,
        0.1,
        0.15,
        0.2,
    ]


def test_config_round_trips_through_json():
    model = ViT(
        img_size=(32, 48),
        patch_size=(4, 8),
        num_classes=3,
        embed_dim=24,
        depth=1,
        num_heads=2,
        representation_size=12,
    )
    config = json.loads(json.dumps(model.config.to_dict()))
    rebuilt = ViT(ViTConfig(**config))
    assert rebuilt.config == model.config
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    assert rebuilt.grid_size == (8, 6)


def test_no_head_returns_the_representation():
    assert ViT(SMALL, num_classes=0)(torch.randn(2, 3, 32, 32)).shape == (2, 48)
    assert ViT(SMALL, num_classes=0, representation_size=7)(
        torch.randn(2, 3, 32, 32)
    ).shape == (2, 7)


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (
            torch.randn(3, 32, 32),
            ValueError,
            r"expected a 4-D tensor \(B, C, H, W\), got 3-D with shape \(3, 32, 32\)",
        ),
        (torch.randn(1, 3, 32, 32, 1), ValueError, r"got 5-D"),
        (
            torch.randn(1, 1, 32, 32),
            ValueError,
            r"expected 3 channels .* got shape \(1, 1, 32, 32\)",
        ),
        (
            torch.randn(1, 3, 30, 32),
            ValueError,
            r"multiples of the patch size 4x4, got 30x32",
        ),
        (
            torch.randn(1, 3, 2, 4),
            ValueError,
            r"positive multiples of the patch size 4x4, got 2x4",
        ),
        ([[1.0]], TypeError, r"expected a torch.Tensor"),
    ],
)
def test_bad_input_is_rejected_with_what_was_expected_and_received(bad, error, message):
    with pytest.raises(error, match=message):
        ViT(SMALL)(bad)


def test_bad_input_is_rejected_before_any_compute(monkeypatch):
    model = ViT(SMALL)
    calls = []
    monkeypatch.setattr(
        model.patch_embedding.proj, "forward", lambda x: calls.append(x)
    )
    with pytest.raises(ValueError):
        model(torch.randn(1, 3, 30, 32))
    assert calls == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(embed_dim=50, num_heads=3),
            "embed_dim must be divisible by num_heads, got embed_dim=50, num_heads=3",
        ),
        (
            dict(img_size=30),
            r"img_size must be a multiple of patch_size, got img_size=\(30, 30\), patch_size=\(4, 4\)",
        ),
        (dict(patch_size=0), "patch_size must be a positive int"),
        (dict(depth=0), "depth must be a positive int, got 0"),
        (dict(num_classes=-1), "num_classes must be an int >= 0"),
        (dict(drop_rate=1.0), r"drop_rate must be in \[0, 1\), got 1.0"),
        (dict(drop_path_rate=-0.1), "drop_path_rate"),
        (
            dict(representation_size=0),
            "representation_size must be None or a positive int, got 0",
        ),
        (
            dict(gelu_approximate="fast"),
            "gelu_approximate must be 'none' or 'tanh', got 'fast'",
        ),
        (dict(mlp_ratio=0), "mlp_ratio"),
        (
            dict(conv_stem=True, patch_size=(4, 8), img_size=(32, 64)),
            "square patch size",
        ),
    ],
)
def test_bad_configuration_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ViT(SMALL, **kwargs)


# ---- Table 1 ----------------------------------------------------------------------------------------

TABLE_1 = {
    "Ti/16": 5_717_416,
    "S/16": 22_050_664,
    "B/16": 86_567_656,
    "B/32": 88_224_232,
    "L/16": 304_326_632,
    "L/32": 306_535_400,
    "H/14": 632_045_800,
}


@pytest.mark.parametrize("name", list(TABLE_1))
def test_table1_parameter_counts_are_exact(name):
    with torch.device("meta"):
        model = create_vit(name)
    assert sum(p.numel() for p in model.parameters()) == TABLE_1[name]
    assert count_parameters(model.config) == TABLE_1[name]


@pytest.mark.parametrize("spelling", ["b/16", "ViT-B/16", "vit_b_16", " B_16 "])
def test_create_vit_accepts_common_spellings(spelling):
    with torch.device("meta"):
        assert create_vit(spelling).config == create_vit("B/16").config


def test_create_vit_overrides_and_unknown_names():
    model = create_vit("Ti/8", img_size=32, num_classes=10)
    assert (
        model.config.embed_dim,
        model.config.patch_size,
        model.config.num_classes,
    ) == (192, 8, 10)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "unknown ViT variant 'X/16': expected one of Ti/P, S/P, B/P, L/P, H/P, Micro/P"
        ),
    ):
        create_vit("X/16")
    with pytest.raises(
        TypeError, match="em9ed_dim"
    ):  # a misspelled keyword is an error, never ignored
        create_vit("Ti/16", em9ed_dim=64)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"qkv_bias": False},
        {"representation_size": 20},
        {"num_classes": 0},
        {"img_size": (32, 48), "in_channels": 1},
        {"mlp_ratio": 2.5},
    ],
)
def test_closed_forms_match_the_model(options):
    # On the meta device attention decomposes into matrix products that FlopCounterMode sees (a
    # fused CPU attention kernel would go uncounted), and nothing is computed.
    with torch.device("meta"):
        model = ViT(SMALL, **options).eval()
        assert count_parameters(model.config) == sum(
            p.numel() for p in model.parameters()
        )
        h, w = to_hw(model.config.img_size)
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, model.config.in_channels, h, w))
    assert counter.get_total_flops() == 2 * count_macs(model.config)


def to_hw(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def test_closed_forms_refuse_the_conv_stem():
    config = ViT(SMALL, conv_stem=True).config
    for count in (count_parameters, count_macs):
        with pytest.raises(ValueError, match="conv_stem=True"):
            count(config)
        with pytest.raises(TypeError, match="takes a ViTConfig"):
            count(SMALL.to_dict())
        with pytest.raises(TypeError, match="unexpected keyword argument 'img_size'"):
            count(**SMALL.to_dict())


def test_average_pooling_reads_the_mean_of_the_normed_patch_tokens():
    torch.manual_seed(0)
    model = randomise_head(
        ViT(
            img_size=16,
            patch_size=4,
            num_classes=3,
            embed_dim=32,
            depth=1,
            num_heads=2,
            global_pool="avg",
        )
    )
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        z = model.forward_features(x)  # LN(z_L): (B, T, D)
        torch.testing.assert_close(model(x), model.head(z[:, 1:].mean(dim=1)))
        assert not torch.allclose(model(x), model.head(z[:, 0]))
    assert model.config.global_pool == "avg"
    with pytest.raises(
        ValueError, match="global_pool must be 'token' .* or 'avg' .*, got 'max'"
    ):
        ViT(global_pool="max")


# ---- the configuration -----------------------------------------------------------------------------


def test_config_is_frozen_normalised_and_shared_by_model_and_counts():
    config = ViTConfig(
        img_size=[32, 32],
        patch_size=(4, 4),
        num_classes=10,
        embed_dim=48,
        depth=2,
        num_heads=3,
    )
    assert (
        config.img_size == 32
        and config.patch_size == 4
        and config.grid_size == (8, 8)
        and config.mlp_dim == 192
    )
    with pytest.raises(AttributeError):
        config.depth = 3  # frozen: a model's config cannot change under it
    model = ViT(config)
    assert model.config == config and ViT.from_config(config).config == config
    assert ViT(config, num_classes=5).config == ViTConfig(
        **{**config.to_dict(), "num_classes": 5}
    )
    assert ViT(**SMALL.to_dict()).config == SMALL
    assert ViTConfig(img_size=(32, 48), patch_size=4).to_dict()["img_size"] == [32, 48]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(embed_dim=50, num_heads=3), "embed_dim must be divisible by num_heads"),
        (dict(img_size=30, patch_size=4), "img_size must be a multiple of patch_size"),
        (dict(attn_drop_rate=-0.5), "attn_drop_rate must be in"),
        (dict(global_pool="max"), "global_pool must be"),
        (dict(depth=0), "depth must be a positive int"),
        (dict(num_heads=2.0), "num_heads must be a positive int"),
        (dict(in_channels=True), "in_channels must be a positive int"),
        (dict(num_classes=-1), "num_classes must be an int >= 0"),
        (dict(qkv_bias="yes"), "qkv_bias must be True or False"),
        (dict(layer_norm_eps=0.0), "layer_norm_eps must be a positive float"),
        (dict(patch_size=(4, 4, 4)), "patch_size must be a positive int or a pair"),
    ],
)
def test_config_refuses_impossible_combinations_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        ViTConfig(**kwargs)
    with pytest.raises(ValueError, match=re.escape(field)):
        ViT(**kwargs)


def test_unknown_keywords_are_errors_everywhere():
    with pytest.raises(TypeError, match="em9ed_dim"):
        ViTConfig(em9ed_dim=64)
    with pytest.raises(TypeError, match="em9ed_dim"):
        ViT(em9ed_dim=64)
    with pytest.raises(TypeError, match="em9ed_dim"):
        ViT(ViTConfig(), em9ed_dim=64)
    with pytest.raises(TypeError, match="expected a ViTConfig"):
        ViT(SMALL.to_dict())
    with pytest.raises(TypeError):
        count_parameters(ViTConfig(), depth=3)
