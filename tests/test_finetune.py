"""§3.2's fine-tuning moves: a zero-initialised head, E_pos resized to a new grid, loading what to fine-tune."""

import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import RidgeClassifier

from conftest import randomise_all
from going_modular.checkpoint import save_model
from going_modular.finetune import (
    DIGITS_VIT,
    SECOND_DIGITS,
    adapt,
    downsample,
    few_shot_accuracy,
    few_shot_features,
    from_pretrained,
    held_out_task,
    pick_by_held_out,
    pretrained_config,
    ridge_classifier,
    shuffle_position_embedding,
    sweep_start,
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


@pytest.mark.parametrize(
    "shape, l2", [((30, 5), 1.0), ((12, 40), 0.1), ((50, 3), 10.0)]
)
def test_ridge_classifier_matches_scikit_learns_ridge_classifier(shape, l2):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator)
    labels = torch.arange(shape[0]) % 3
    w, b = ridge_classifier(x, labels, 3, l2=l2)
    reference = RidgeClassifier(alpha=l2).fit(x.numpy(), labels.numpy())
    torch.testing.assert_close(
        x.double() @ w + b,
        torch.from_numpy(reference.decision_function(x.numpy())).double(),
        rtol=1e-6,
        atol=1e-6,
    )


def test_ridge_classifier_and_few_shot_refuse_bad_input():
    x, labels = torch.randn(6, 2), torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="l2 must be positive, got 0"):
        ridge_classifier(x, labels, 3, l2=0)
    with pytest.raises(ValueError, match=r"expected x \(n, d\) and labels \(n,\)"):
        ridge_classifier(x, labels[:5], 3, l2=1.0)
    features = ((x, labels), (x, labels))
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 2\], got 3"):
        few_shot_accuracy(features, k=3, draw=0)
    with pytest.raises(ValueError, match="features must be one of"):
        few_shot_features("hog", 0, device=torch.device("cpu"))


def test_few_shot_accuracy_separates_separable_classes_from_one_image_each():
    centres = torch.tensor([[5.0, 0.0], [0.0, 5.0], [-5.0, -5.0]])
    labels = torch.arange(60) % 3
    x = centres[labels] + 0.1 * torch.randn(
        60, 2, generator=torch.Generator().manual_seed(0)
    )
    assert few_shot_accuracy(((x, labels), (x, labels)), k=1, draw=7) == 1.0


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


def test_held_out_task_splits_each_class_into_disjoint_nested_parts():
    train, held, test = held_out_task(SECOND_DIGITS, 8, per_class=5, held_out=3, seed=1)
    assert train[0].shape == (25, 1, 8, 8) and held[0].shape == (15, 1, 8, 8)
    assert train[1].bincount().tolist() == [5] * 5
    assert held[1].bincount().tolist() == [3] * 5
    assert test[1].unique().tolist() == [0, 1, 2, 3, 4]
    flat = train[0].flatten(1)
    assert not (flat[:, None] == held[0].flatten(1)[None]).all(-1).any()  # disjoint
    larger, same_held, _ = held_out_task(
        SECOND_DIGITS, 8, per_class=9, held_out=3, seed=1
    )
    assert torch.equal(same_held[0], held[0])
    assert (flat[:, None] == larger[0].flatten(1)[None]).all(-1).any(1).all()  # nested
    with pytest.raises(ValueError, match="per_class must be a positive int, got 0"):
        held_out_task(SECOND_DIGITS, 8, per_class=0, held_out=3, seed=1)
    with pytest.raises(ValueError, match="held_out must be a positive int"):
        held_out_task(SECOND_DIGITS, 8, per_class=5, held_out=2.0, seed=1)
    with pytest.raises(ValueError, match=r"per_class \+ held_out must be at most 139"):
        held_out_task(SECOND_DIGITS, 8, per_class=130, held_out=10, seed=1)


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


def test_pick_by_held_out_keeps_the_best_held_out_rate_and_the_first_on_ties():
    assert pick_by_held_out([0.5, 0.8, 0.8], [0.9, 0.6, 0.7]) == (1, 0.6)
    assert pick_by_held_out([0.4], [0.3]) == (0, 0.3)
    with pytest.raises(ValueError, match="equally long and not empty"):
        pick_by_held_out([0.5, 0.6], [0.5])
    with pytest.raises(ValueError, match="equally long and not empty"):
        pick_by_held_out([], [])


def test_sweep_start_copies_the_pretrained_body_with_a_zero_head():
    torch.manual_seed(0)
    pretrained = randomise_all(ViT(DIGITS_VIT), std=0.1)
    before = {k: v.clone() for k, v in pretrained.state_dict().items()}
    tuned = sweep_start(pretrained, "pretrained")
    assert tuned is not pretrained and tuned.head.weight.abs().max() == 0
    assert torch.equal(tuned.position_embedding, pretrained.position_embedding)
    assert all(torch.equal(v, pretrained.state_dict()[k]) for k, v in before.items())
    scratch = sweep_start(pretrained, "scratch")
    assert not torch.equal(scratch.position_embedding, pretrained.position_embedding)
    with pytest.raises(ValueError, match="arm must be one of"):
        sweep_start(pretrained, "frozen")


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
