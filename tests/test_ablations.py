"""The experiment tools of the data-size and ablation chapter: the CNN baseline, subsets, Table 8's variants."""

import pytest
import torch
from torch.utils.data import TensorDataset

from conftest import randomise_head
from going_modular.ablations import (
    ViT2DPosition,
    small_cnn,
    subset,
    without_position_embedding,
)
from going_modular.data import DataSplits
from going_modular.engine import build_optimizer
from going_modular.vit import ViT

CONFIG = dict(
    img_size=(8, 12), patch_size=4, num_classes=3, embed_dim=16, depth=1, num_heads=2
)


def splits(n: int = 20) -> DataSplits:
    images, labels = (
        torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1),
        torch.arange(n) % 4,
    )
    return DataSplits(
        TensorDataset(images, labels),
        TensorDataset(images[:4], labels[:4]),
        list("abcd"),
        {},
    )


def test_small_cnn_maps_images_of_any_size_to_logits():
    model = small_cnn(5, in_channels=1)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 5) and model(
        torch.randn(2, 1, 16, 20)
    ).shape == (2, 5)


def test_subset_is_seeded_keeps_the_test_set_and_checks_the_fraction():
    data = splits()
    a, b, c = (
        subset(data, 0.3, seed=0),
        subset(data, 0.3, seed=0),
        subset(data, 0.3, seed=1),
    )
    assert (
        len(a.train) == 6 and a.test is data.test and a.class_names == data.class_names
    )
    assert torch.equal(a.train.tensors[0], b.train.tensors[0]) and not torch.equal(
        a.train.tensors[0], c.train.tensors[0]
    )
    assert (
        len(set(a.train.tensors[0].flatten().tolist())) == 6
    )  # drawn without replacement
    with pytest.raises(ValueError, match="fraction must be in"):
        subset(data, 0.0, seed=0)


def test_without_position_embedding_is_zero_and_frozen():
    model = without_position_embedding(ViT(**CONFIG))
    assert (
        model.position_embedding.abs().max() == 0
        and not model.position_embedding.requires_grad
    )
    model(torch.randn(2, 3, 8, 12)).sum().backward()
    assert model.position_embedding.grad is None


def test_2d_position_embedding_is_row_and_column_halves_and_trains():
    torch.manual_seed(0)
    model = ViT2DPosition(**CONFIG)
    e_pos = model.position_embedding[0]  # (1 + 2*3, D)
    assert e_pos.shape == (7, 16) and "position_embedding" not in dict(
        model.named_parameters()
    )
    for i in range(2):
        for j in range(3):
            expected = torch.cat([model.row_embedding[i], model.column_embedding[j]])
            torch.testing.assert_close(e_pos[1 + i * 3 + j], expected)
    torch.testing.assert_close(e_pos[0], model.class_position[0])
    randomise_head(model)  # a zero head passes no gradient back
    model(torch.randn(2, 3, 8, 12)).square().sum().backward()
    assert all(
        p.grad.abs().sum() > 0
        for p in (model.row_embedding, model.column_embedding, model.class_position)
    )
    decayed, exempt = build_optimizer(model, weight_decay=0.1).param_groups
    exempt_ids = {id(p) for p in exempt["params"]}
    assert {
        id(model.row_embedding),
        id(model.column_embedding),
        id(model.class_position),
    } <= exempt_ids
