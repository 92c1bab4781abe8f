"""What pre-training buys (§4.1, §3.2): the few-shot linear probe and the labels sweep's parts."""

import pytest
import torch
from sklearn.linear_model import RidgeClassifier

from conftest import randomise_all
from going_modular.finetune import DIGITS_VIT, SECOND_DIGITS
from going_modular.transfer import (
    few_shot_accuracy,
    few_shot_features,
    held_out_task,
    pick_by_held_out,
    ridge_classifier,
    sweep_start,
)
from going_modular.vit import ViT


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
