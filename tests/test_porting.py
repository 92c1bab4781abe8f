"""Our ViT computes the same function as torchvision's and timm's on the same weights."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torchvision.models.vision_transformer import ConvStemConfig, VisionTransformer

from conftest import randomise_head
from going_modular import (
    StateDictMismatchError,
    ViT,
    create_vit,
    load_timm_state_dict,
    load_torchvision_state_dict,
    to_timm_state_dict,
    to_torchvision_state_dict,
)


def small_vit(**overrides) -> ViT:
    """A two-block ViT on 32-pixel images with five classes, small enough to port in milliseconds."""
    return ViT(**{**dict(img_size=32, patch_size=8, num_classes=5, embed_dim=32, depth=2, num_heads=2), **overrides})


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


@pytest.mark.parametrize("timm_name, name", [("vit_tiny_patch16_224", "Ti/16"), ("vit_base_patch16_224", "B/16")])
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
    tv = VisionTransformer(image_size=224, patch_size=16, num_layers=12, num_heads=3, hidden_dim=192, mlp_dim=768)
    tv.load_state_dict(to_torchvision_state_dict(ours))
    tm = timm.create_model("vit_tiny_patch16_224")
    tm.load_state_dict(to_timm_state_dict(ours))
    assert max_difference(ours, tv, images) <= 1e-4
    assert max_difference(ours, tm, images) <= 1e-4


@pytest.mark.parametrize(
    "export, load",
    [(to_torchvision_state_dict, load_torchvision_state_dict), (to_timm_state_dict, load_timm_state_dict)],
)
def test_round_trip_is_exact(export, load):
    torch.manual_seed(0)
    source = small_vit()
    target = load(ViT(**source.config), export(source))
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
        conv_stem_configs=[ConvStemConfig(out_channels=w, kernel_size=3, stride=2) for w in (4, 8, 16)],
    )
    randomise_head(reference)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    ours = small_vit(mlp_ratio=2.0, representation_size=16, conv_stem=True)
    load_torchvision_state_dict(ours, reference.state_dict())
    assert max_difference(ours, reference, torch.randn(3, 3, 32, 32)) <= 1e-4
    assert set(to_torchvision_state_dict(ours)) == set(reference.state_dict())


def test_old_torchvision_mlp_names_are_accepted():
    source = small_vit()
    old = {
        key.replace(".mlp.0.", ".mlp.linear_1.").replace(".mlp.3.", ".mlp.linear_2."): value
        for key, value in to_torchvision_state_dict(source).items()
    }
    assert any(".mlp.linear_1." in key for key in old)
    target = load_torchvision_state_dict(ViT(**source.config), old)
    assert torch.equal(target.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)


def test_mismatches_are_all_listed_and_nothing_is_copied():
    small = small_vit()
    state = to_timm_state_dict(small_vit(num_classes=7, depth=3))
    del state["norm.bias"]
    before = {k: v.clone() for k, v in small.state_dict().items()}
    with pytest.raises(StateDictMismatchError) as caught:
        load_timm_state_dict(small, state)
    err = caught.value
    assert err.missing == ["norm.bias"]
    assert "blocks.2.attn.qkv.weight" in err.unexpected and len(err.unexpected) == 12
    assert err.mismatched == ["head.weight (expected (5, 32), got (7, 32))", "head.bias (expected (5,), got (7,))"]
    message = str(err)
    assert (
        "missing keys (1): norm.bias" in message and "unexpected keys (12)" in message and "wrong shapes (2)" in message
    )
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())


def test_a_module_instead_of_a_state_dict_is_a_type_error():
    with pytest.raises(TypeError, match=r"expected a state dict \(a mapping of names to tensors\), got function$"):
        load_torchvision_state_dict(create_vit("Ti/16", img_size=32), torchvision.models.vit_b_16)
    with pytest.raises(TypeError, match=r"got VisionTransformer: pass module.state_dict\(\)"):
        load_timm_state_dict(
            ViT(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2), VisionTransformer(32, 8, 1, 2, 32, 64)
        )


def test_timm_layout_has_no_conv_stem_or_pre_logits():
    for options in ({"conv_stem": True}, {"representation_size": 8}):
        model = ViT(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, **options)
        with pytest.raises(ValueError, match="no counterpart in timm's ViT"):
            to_timm_state_dict(model)
