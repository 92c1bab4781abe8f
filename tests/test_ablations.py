"""The experiment tools of the data-size and ablation chapter: the CNN baseline, subsets, the training
streams, the validation images, Table 8's variants."""

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from conftest import randomise_head
from going_modular.ablations import (
    ABLATION_GRID,
    DATA_SIZE_GRID,
    DATA_SIZE_LR,
    LR_SWEEP_GRID,
    POSITION_GRID,
    SEEDS,
    SWEEP_RATES,
    VALIDATION_IMAGES,
    FreshTextures,
    RepeatedBatches,
    ViT2DPosition,
    accuracy,
    build_textures_model,
    count_cnn_macs,
    data_size_run,
    position_run,
    small_cnn,
    subset,
    textures_validation,
    without_position_embedding,
)
from going_modular.data import DataSplits, load_textures_data
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


def test_cnn_macs_closed_form_matches_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    for img_size, classes, channels in ((16, 4, 3), (8, 10, 1), (13, 5, 3)):
        with torch.device("meta"), FlopCounterMode(display=False) as counter:
            small_cnn(classes, in_channels=channels)(
                torch.empty(1, channels, img_size, img_size)
            )
        assert counter.get_total_flops() == 2 * count_cnn_macs(
            img_size, classes, in_channels=channels
        )
    for bad in (dict(img_size=0), dict(num_classes=2.0), dict(in_channels=True)):
        args = dict(img_size=16, num_classes=4, in_channels=3) | bad
        with pytest.raises(ValueError, match=next(iter(bad))):
            count_cnn_macs(
                args["img_size"], args["num_classes"], in_channels=args["in_channels"]
            )


def test_repeated_batches_take_whole_shuffles_for_any_set_size():
    data = TensorDataset(torch.arange(10.0)[:, None], torch.arange(10) % 4)
    stream = RepeatedBatches(data, steps=5, batch_size=4, seed=0)
    batches = list(stream)
    assert len(stream) == 5 and len(batches) == 5
    assert all(x.shape == (4, 1) and y.shape == (4,) for x, y in batches)
    drawn = torch.cat([x[:, 0] for x, _ in batches]).long()  # 20 draws = 2 shuffles
    assert sorted(drawn[:10].tolist()) == sorted(drawn[10:].tolist()) == list(range(10))
    assert not torch.equal(drawn[:10], drawn[10:])  # a new order each shuffle
    assert all(torch.equal(y, x[:, 0].long() % 4) for x, y in batches)  # pairs kept
    more = torch.cat([x[:, 0] for x, _ in stream]).long()  # iterating again continues
    assert sorted(more.tolist()) == sorted(list(range(10)) * 2)
    again = torch.cat(
        [x[:, 0] for x, _ in RepeatedBatches(data, steps=5, batch_size=4, seed=0)]
    )
    assert torch.equal(again.long(), drawn)
    small = list(RepeatedBatches(data, steps=1, batch_size=25, seed=1))[0][0]
    assert len(small) == 25  # a set smaller than a batch still fills it
    for bad, match in (
        (dict(steps=0), "steps"),
        (dict(batch_size=1.5), "batch_size"),
        (dict(dataset=[1, 2]), "dataset"),
    ):
        with pytest.raises(ValueError, match=match):
            RepeatedBatches(**(dict(dataset=data, steps=2, batch_size=4) | bad))


def test_fresh_textures_continue_the_stream_of_load_textures_data():
    spec = load_textures_data(img_size=16, num_train=4, num_test=4).preprocessing
    stream = FreshTextures(
        spec, steps=2, batch_size=8, rng=np.random.default_rng([0, 0])
    )
    (first, labels), (second, _) = list(stream)
    same = load_textures_data(
        img_size=16, num_train=8, num_test=4, seed=0
    ).train.tensors
    assert torch.equal(first, same[0]) and torch.equal(labels, same[1])
    assert first.shape == (8, 3, 16, 16) and not torch.equal(first, second)
    assert torch.bincount(labels).tolist() == [2, 2, 2, 2]  # balanced batches
    for bad, match in (
        (dict(steps=-1), "steps"),
        (dict(batch_size=0), "batch_size"),
        (dict(rng=0), "rng"),
    ):
        with pytest.raises(ValueError, match=match):
            FreshTextures(spec, **(dict(steps=1, rng=np.random.default_rng(0)) | bad))
    with pytest.raises(ValueError, match="num_images"):
        stream.draw(0)


def test_validation_images_are_neither_training_nor_test_images():
    data = load_textures_data(
        img_size=16, num_train=VALIDATION_IMAGES, num_test=VALIDATION_IMAGES
    )
    validation = textures_validation(data.preprocessing, seed=0)
    images = validation.tensors[0]
    assert images.shape == (VALIDATION_IMAGES, 3, 16, 16)
    assert torch.equal(
        images, textures_validation(data.preprocessing, seed=0).tensors[0]
    )

    def keys(tensor: torch.Tensor) -> set[bytes]:
        return {image.numpy().tobytes() for image in tensor}

    assert len(keys(images)) == VALIDATION_IMAGES
    assert not keys(images) & (keys(data.train.tensors[0]) | keys(data.test.tensors[0]))


def test_accuracy_counts_right_answers():
    data = TensorDataset(torch.eye(4), torch.tensor([0, 1, 2, 0]))
    model = torch.nn.Identity()  # logits = the one-hot image: predicts 0, 1, 2, 3
    assert accuracy(model, data, device=torch.device("cpu")) == 0.75


def test_models_and_runs_name_a_bad_argument():
    for kwargs, match in (
        (dict(model="resnet"), "model"),
        (dict(pooling="max"), "pooling"),
        (dict(position="3d"), "position"),
    ):
        with pytest.raises(ValueError, match=match):
            build_textures_model(**kwargs)
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="model"):
        data_size_run(dict(model="mlp", train_images=40, seed=0), device=cpu)
    with pytest.raises(ValueError, match="train_images"):
        data_size_run(dict(model="vit", train_images=41, seed=0), device=cpu)
    with pytest.raises(
        ValueError, match=r"steps must be one of \(600, 2400\), got 100"
    ):
        position_run(dict(position="1d", steps=100, seed=0), device=cpu)


def test_grids_pair_arms_by_seed_and_choose_rates_from_the_sweep():
    for grid, arm_keys in (
        (DATA_SIZE_GRID, ("model", "train_images")),
        (POSITION_GRID, ("position", "steps")),
        (ABLATION_GRID, ("pooling", "lr")),
    ):
        arms = {}
        for config in grid:
            arms.setdefault(tuple(config[k] for k in arm_keys), []).append(
                config["seed"]
            )
        assert all(seeds == list(SEEDS) for seeds in arms.values())
    assert all(DATA_SIZE_LR[m] in rates for m, rates in SWEEP_RATES.items())
    assert all(c["seed"] not in SEEDS for c in LR_SWEEP_GRID)
