"""§3.2's fine-tuning moves: a zero-initialised head, E_pos resized to a new grid, loading what to fine-tune."""

import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import RidgeClassifier

from conftest import randomise_all
from going_modular.checkpoint import save_model
from going_modular.finetune import (
    adapt,
    few_shot_accuracy,
    few_shot_features,
    from_pretrained,
    pretrained_config,
    ridge_classifier,
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
