"""§3.2's fine-tuning moves: a zero-initialised head, E_pos resized to a new grid, loading what to fine-tune."""

import pytest
import torch
import torch.nn.functional as F

from conftest import randomise_all
from going_modular.checkpoint import save_model
from going_modular.finetune import (
    adapt,
    downsample,
    from_pretrained,
    pretrained_config,
    shuffle_position_embedding,
    train_steps,
)
from going_modular.vit import ViT, ViTConfig

CONFIG = ViTConfig(
    img_size=16,
    patch_size=4,
    in_channels=1,
    num_classes=3,
    embed_dim=32,
    depth=1,
    num_heads=2,
)


def test_adapt_replaces_the_head_with_a_zero_one_without_pre_logits():
    torch.manual_seed(0)
    model = randomise_all(ViT(CONFIG, representation_size=8), std=0.1)
    features = model.forward_features(torch.randn(2, 1, 16, 16))[:, 0]
    assert adapt(model, num_classes=7) is model
    assert isinstance(
        model.pre_logits, torch.nn.Identity
    ) and model.head.weight.shape == (7, 32)
    assert model.config.num_classes == 7 and model.config.representation_size is None
    logits = model(torch.randn(2, 1, 16, 16))
    assert logits.shape == (2, 7) and logits.abs().max() == 0
    assert features.abs().max() > 0  # the body is untouched: only the head is new
    with pytest.raises(ValueError, match="num_classes must be an int >= 0"):
        adapt(model, num_classes=-1)


def test_adapt_interpolates_the_grid_and_keeps_the_class_row():
    torch.manual_seed(0)
    model = randomise_all(ViT(CONFIG), std=0.1)
    old = model.position_embedding.detach().clone()  # (1, 1 + 4*4, 32)
    adapt(model, img_size=(24, 32))
    grid = old[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    expected = (
        F.interpolate(grid, size=(6, 8), mode="bicubic", align_corners=False)
        .permute(0, 2, 3, 1)
        .reshape(1, 48, 32)
    )
    torch.testing.assert_close(model.position_embedding[:, 1:].detach(), expected)
    assert torch.equal(model.position_embedding[:, 0], old[:, 0])
    assert model.grid_size == (6, 8) and model.config.img_size == (24, 32)
    assert (
        isinstance(model.position_embedding, torch.nn.Parameter)
        and model.position_embedding.requires_grad
    )
    assert model(torch.randn(1, 1, 24, 32)).shape == (1, 3)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        adapt(model, img_size=18)


def test_from_pretrained_checkpoint_folder(tmp_path):
    torch.manual_seed(0)
    model = randomise_all(ViT(CONFIG), std=0.1)
    folder = save_model(
        model, tmp_path / "ckpt", {"class_names": ["a", "b", "c"], "preprocessing": {}}
    )
    assert pretrained_config(folder) == model.config
    same = from_pretrained(folder).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(same(x), model.eval()(x))
    moved = from_pretrained(folder, img_size=32, num_classes=5)
    assert (
        moved.position_embedding.shape == (1, 1 + 8 * 8, 32)
        and moved.head.weight.abs().max() == 0
    )
    assert (
        from_pretrained(folder, img_size=16, num_classes=3).head.weight.abs().max() > 0
    )  # nothing to change
    with pytest.raises(FileNotFoundError):
        from_pretrained(tmp_path / "missing")


def test_shuffle_position_embedding_permutes_the_patch_rows_and_keeps_the_class_row():
    torch.manual_seed(0)
    model = randomise_all(ViT(CONFIG), std=0.1)
    old = model.position_embedding.detach().clone()  # (1, 1 + 16, 32)
    assert shuffle_position_embedding(model, seed=3) is model
    new = model.position_embedding.detach()
    assert torch.equal(new[:, 0], old[:, 0])
    matches = [
        [j for j in range(16) if torch.equal(new[0, 1 + i], old[0, 1 + j])]
        for i in range(16)
    ]
    assert sorted(m[0] for m in matches) == list(range(16))  # a permutation of rows
    assert not torch.equal(new, old)
    again = randomise_all(ViT(CONFIG), std=0.1)
    again.load_state_dict({**model.state_dict(), "position_embedding": old})
    shuffle_position_embedding(again, seed=3)
    assert torch.equal(again.position_embedding, model.position_embedding)  # seeded
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="seed must be a non-negative int"):
            shuffle_position_embedding(model, seed=bad)


def test_train_steps_trains_exactly_the_steps_in_seeded_passes():
    x = torch.arange(10.0).reshape(10, 1, 1, 1)
    y = torch.arange(10) % 2
    seen = []
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1, 2))
    model.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].flatten()) if module.training else None
    )
    kwargs = dict(steps=7, batch_size=4, seed=0, device=torch.device("cpu"), lr=0.1)
    accuracies = train_steps(model, (x, y), [(x, y), (x[:4], y[:4])], **kwargs)
    assert len(seen) == 7 and len(accuracies) == 2
    assert all(0 <= a <= 1 for a in accuracies)
    order = torch.cat(seen).long().tolist()  # 28 images: 2 passes and 8 of a third
    assert sorted(order[:10]) == list(range(10)) and sorted(order[10:20]) == list(
        range(10)
    )
    again = []
    model.register_forward_pre_hook(
        lambda module, args: (
            again.append(args[0].flatten()) if module.training else None
        )
    )
    seen.clear()
    train_steps(model, (x, y), [(x, y)], **kwargs)
    assert torch.equal(torch.cat(seen), torch.cat(again))
    assert torch.cat(seen).long().tolist() == order  # the same seed, the same batches
    with pytest.raises(ValueError, match="steps must be a positive int, got 0"):
        train_steps(model, (x, y), [(x, y)], **{**kwargs, "steps": 0})
    with pytest.raises(ValueError, match="evaluate_on must hold at least one"):
        train_steps(model, (x, y), [], **kwargs)


def test_downsample_averages_blocks_and_refuses_sizes_it_cannot_divide():
    images = torch.randn(2, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(downsample(images), F.avg_pool2d(images, 2))
    assert downsample(images, 4).shape == (2, 3, 2, 3)
    stripes = (torch.arange(8) // 2 % 2).float().expand(1, 1, 8, 8)  # 2-px stripes
    assert downsample(stripes.roll(1, dims=3)).unique().tolist() == [0.5]  # gone
    with pytest.raises(ValueError, match=r"multiples of factor=2, got \(2, 3, 8, 9\)"):
        downsample(torch.zeros(2, 3, 8, 9))
    with pytest.raises(ValueError, match="factor must be a positive int, got 0"):
        downsample(images, 0)
