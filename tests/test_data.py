"""Tests for going_modular.data: preprocessing specs, datasets and seeded DataLoaders."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from going_modular.data import (
    QUADRANT_NAMES,
    TEXTURE_NAMES,
    DataSplits,
    Preprocess,
    UnreadableImageError,
    build_transform,
    create_dataloaders,
    draw_textured_objects,
    draw_two_object_scenes,
    load_digits_data,
    load_image_folder,
    load_scenes_data,
    load_textures_data,
    make_preprocessing,
    read_image,
)


def write_image_folder(
    root: Path, classes=("cat", "dog"), per_class: int = 3, size=(12, 10)
) -> Path:
    """A tiny ImageFolder with train/ and test/ splits of random RGB PNGs."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture
def spec():
    return make_preprocessing(8, channels=1, max_value=16.0, mean=[0.5], std=[0.25])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(img_size=0), "img_size"),
        (dict(img_size=(8, 8, 8)), "img_size"),
        (dict(channels=2), "channels"),
        (dict(max_value=0), "max_value"),
        (dict(mean=[0.5, 0.5]), "mean and std"),
        (dict(std=[0.0]), "std must be positive"),
        (dict(interpolation="nearest"), "interpolation"),
    ],
)
def test_make_preprocessing_rejects_bad_values(kwargs, message):
    arguments = (
        dict(img_size=8, channels=1, max_value=16.0, mean=[0.5], std=[0.5]) | kwargs
    )
    with pytest.raises(ValueError, match=message):
        make_preprocessing(**arguments)


def test_preprocess_scales_and_normalises(spec):
    raw = np.arange(64, dtype=np.float64).reshape(8, 8) % 17  # values 0..16
    x = Preprocess(spec)(raw)
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    expected = (torch.as_tensor(raw, dtype=torch.float32) / 16.0 - 0.5) / 0.25
    torch.testing.assert_close(x[0], expected)


def test_preprocess_resizes_and_converts_channels():
    spec = make_preprocessing(
        (6, 4), channels=3, max_value=255.0, mean=[0.0] * 3, std=[1.0] * 3
    )
    grey = Image.fromarray(
        np.full((20, 30), 255, dtype=np.uint8)
    )  # a constant image stays constant
    x = Preprocess(spec)(grey)
    assert x.shape == (3, 6, 4)
    torch.testing.assert_close(x, torch.ones(3, 6, 4))


def test_preprocess_rejects_bad_input(spec):
    with pytest.raises(TypeError, match="PIL image or a numpy array"):
        Preprocess(spec)([[0, 1], [2, 3]])
    with pytest.raises(ValueError, match="shape"):
        Preprocess(spec)(np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="lacks"):
        Preprocess({"img_size": [8, 8]})


def test_augmented_transform_keeps_shape_and_varies():
    spec = make_preprocessing(
        16, channels=3, max_value=255.0, mean=[0.5] * 3, std=[0.5] * 3
    )
    image = Image.fromarray(
        np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    )
    augment = build_transform(spec, augment=True)
    torch.manual_seed(0)
    outputs = [augment(image) for _ in range(8)]
    assert all(out.shape == (3, 16, 16) for out in outputs)
    assert any(not torch.equal(outputs[0], out) for out in outputs[1:])
    torch.manual_seed(0)
    assert torch.equal(augment(image), outputs[0])


def test_digits_split_is_stratified_and_seeded():
    data = load_digits_data(seed=0)
    assert len(data.train) + len(data.test) == 1797
    assert data.class_names == [str(d) for d in range(10)]
    train_labels, test_labels = data.train.tensors[1], data.test.tensors[1]
    counts = torch.bincount(train_labels, minlength=10) + torch.bincount(
        test_labels, minlength=10
    )
    assert torch.all(
        (torch.bincount(test_labels, minlength=10) - 0.2 * counts).abs() <= 1
    )
    assert torch.equal(load_digits_data(seed=0).test.tensors[0], data.test.tensors[0])
    assert not torch.equal(
        load_digits_data(seed=1).test.tensors[0], data.test.tensors[0]
    )
    image = data.train.tensors[0]
    assert image.shape[1:] == (1, 8, 8) and image.min() == -1 and image.max() == 1


def test_digits_can_be_upsampled():
    data = load_digits_data(img_size=16)
    assert data.train[0][0].shape == (1, 16, 16)
    assert data.preprocessing["img_size"] == [16, 16]
    with pytest.raises(ValueError, match="test_size"):
        load_digits_data(test_size=1.5)


def test_image_folder_keeps_class_names(tmp_path):
    root = write_image_folder(tmp_path / "pets")
    data = load_image_folder(root, img_size=8)
    assert data.class_names == ["cat", "dog"]
    assert len(data.train) == len(data.test) == 6
    image, label = data.test[5]
    assert image.shape == (3, 8, 8) and label == 1
    assert data.preprocessing["max_value"] == 255.0


def test_image_folder_in_grey(tmp_path):
    data = load_image_folder(
        write_image_folder(tmp_path / "pets"), img_size=8, channels=1
    )
    assert data.train[0][0].shape == (1, 8, 8) and len(data.preprocessing["mean"]) == 1


def test_image_folder_rejects_bad_layouts(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_image_folder(tmp_path / "missing")
    root = write_image_folder(tmp_path / "pets")
    (root / "test" / "dog").rename(root / "test" / "bird")
    with pytest.raises(ValueError, match="same class folders"):
        load_image_folder(root, img_size=8)
    only_train = tmp_path / "only_train"
    (only_train / "train" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="test"):
        load_image_folder(only_train)


def test_unreadable_image_is_named_before_training(tmp_path):
    root = write_image_folder(tmp_path / "pets")
    broken = root / "train" / "dog" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(UnreadableImageError, match="broken.png"):
        load_image_folder(root, img_size=8)
    data = load_image_folder(
        root, img_size=8, check_images=False
    )  # found later, when it is read
    index = [Path(p).name for p, _ in data.train.samples].index("broken.png")
    with pytest.raises(UnreadableImageError, match="broken.png"):
        data.train[index]


def test_read_image_returns_a_loaded_copy(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((4, 5, 3), dtype=np.uint8)).save(path)
    image = read_image(path)
    assert image.size == (5, 4)
    path.unlink()  # the file is closed, the pixels stay
    assert np.asarray(image).shape == (4, 5, 3)


def test_dataloaders_are_seeded():
    data = load_digits_data(seed=0)
    first = [
        labels for _, labels in create_dataloaders(data, batch_size=100, seed=3)[0]
    ]
    again = [
        labels for _, labels in create_dataloaders(data, batch_size=100, seed=3)[0]
    ]
    other = [
        labels for _, labels in create_dataloaders(data, batch_size=100, seed=4)[0]
    ]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    assert (
        sum(len(b) for b in first) == len(data.train) // 100 * 100
    )  # the last incomplete batch is dropped


def test_dataloaders_test_split_is_not_shuffled_and_cpu_does_not_pin():
    data = load_digits_data(seed=0)
    train, test = create_dataloaders(data, batch_size=64)
    labels = torch.cat([y for _, y in test])
    assert torch.equal(labels, data.test.tensors[1])
    assert train.num_workers == 0 and not train.pin_memory
    with pytest.raises(ValueError, match="batch_size"):
        create_dataloaders(data, batch_size=0)


def test_worker_augmentations_repeat_under_a_seed(tmp_path):
    data = load_image_folder(
        write_image_folder(tmp_path / "pets"), img_size=8, augment=True
    )
    assert (
        create_dataloaders(data, batch_size=6)[0].num_workers >= 1
    )  # files are decoded in workers by default

    def first_epoch(seed: int) -> torch.Tensor:
        train, _ = create_dataloaders(data, batch_size=6, seed=seed, num_workers=1)
        return torch.cat([x for x, _ in train])

    assert torch.equal(first_epoch(0), first_epoch(0))
    assert not torch.equal(first_epoch(0), first_epoch(1))


@pytest.fixture(scope="module")
def textures():
    return load_textures_data(img_size=24, num_train=203, num_test=40, seed=3)


def test_textures_shapes_dtypes_and_values(textures):
    assert textures.class_names == list(TEXTURE_NAMES) and len(TEXTURE_NAMES) == 4
    for split, count in (("train", 203), ("test", 40)):
        images, labels = getattr(textures, split).tensors
        masks = textures.masks[split]
        assert images.shape == (count, 3, 24, 24) and images.dtype == torch.float32
        assert labels.shape == (count,) and labels.dtype == torch.long
        assert masks.shape == (count, 24, 24) and masks.dtype == torch.bool
        assert images.min() >= -1.0 and images.max() <= 1.0  # (x / 255 - 0.5) / 0.5
        assert set(labels.tolist()) == {0, 1, 2, 3}
    assert textures.preprocessing == make_preprocessing(
        24, 3, 255.0, [0.5] * 3, [0.5] * 3
    )


def test_textures_masks_are_non_empty_objects_inside_the_image(textures):
    masks = torch.cat([textures.masks["train"], textures.masks["test"]]).float()
    area = masks.sum(dim=(1, 2))
    smallest = (
        np.pi * (0.2 * 24 - 1) ** 2
    )  # a disc whose radius is at least 0.2 image sides, minus a pixel
    assert area.min() >= smallest and area.max() <= (2 * 0.85 * 0.35 * 24 + 1) ** 2
    rows, cols = masks.any(dim=2), masks.any(dim=1)  # (n, 24): where the object is
    height, width = rows.sum(dim=1), cols.sum(dim=1)
    assert (
        height.max() <= 2 * 0.35 * 24 + 1 and width.max() <= 2 * 0.35 * 24 + 1
    )  # never cut by the border


def test_textures_classes_are_balanced(textures):
    counts = torch.bincount(textures.train.tensors[1], minlength=4)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 203


def test_textures_follow_the_preprocessing_spec():
    raw, labels, masks = draw_textured_objects(
        6, img_size=20, rng=np.random.default_rng([5, 1])
    )
    splits = load_textures_data(
        img_size=20, num_train=4, num_test=6, seed=5
    )  # test: stream 1 of seed 5
    assert raw.dtype == np.uint8 and raw.shape == (6, 20, 20, 3)
    for i in range(6):
        torch.testing.assert_close(
            Preprocess(splits.preprocessing)(raw[i]), splits.test.tensors[0][i]
        )
    assert torch.equal(torch.from_numpy(labels), splits.test.tensors[1])
    assert torch.equal(torch.from_numpy(masks), splits.masks["test"])


def test_textures_the_object_carries_its_texture():
    raw, labels, masks = draw_textured_objects(
        40, img_size=32, rng=np.random.default_rng(0)
    )
    for image, label, mask in zip(raw.astype(float), labels, masks, strict=True):
        inside = (
            mask[:-1, :] & mask[1:, :],
            mask[:, :-1] & mask[:, 1:],
        )  # vertical and horizontal neighbours
        dv = (
            np.abs(np.diff(image, axis=0)).sum(axis=2)[inside[0]].mean()
        )  # colour change, summed over RGB
        dh = np.abs(np.diff(image, axis=1)).sum(axis=2)[inside[1]].mean()
        if label == 0:  # horizontal stripes change from row to row, hardly along a row
            assert dv > 2 * dh, (dv, dh)
        elif label == 1:
            assert dh > 2 * dv, (dv, dh)


def test_textures_are_determined_by_the_seed(textures):
    again = load_textures_data(img_size=24, num_train=203, num_test=40, seed=3)
    for a, b in ((textures.train, again.train), (textures.test, again.test)):
        assert all(torch.equal(x, y) for x, y in zip(a.tensors, b.tensors, strict=True))
    assert torch.equal(textures.masks["train"], again.masks["train"])
    other = load_textures_data(img_size=24, num_train=203, num_test=40, seed=4)
    assert not torch.equal(textures.train.tensors[0], other.train.tensors[0])
    assert not torch.equal(textures.masks["test"], other.masks["test"])
    longer = load_textures_data(img_size=24, num_train=300, num_test=40, seed=3)
    assert torch.equal(longer.test.tensors[0], textures.test.tensors[0]), (
        "the test set must not depend on num_train"
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(img_size=8), "img_size must be an int >= 16"),
        (dict(img_size=32.0), "img_size"),
        (dict(num_train=3), "num_train must be an int >= 4"),
        (dict(num_test=0), "num_test"),
        (dict(num_test=True), "num_test"),
        (dict(seed=-1), "seed must be a non-negative int"),
    ],
)
def test_textures_reject_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_textures_data(**kwargs)


def _orientation(image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Mean colour change inside ``mask`` from row to row and from column to column."""
    inside_v, inside_h = mask[:-1, :] & mask[1:, :], mask[:, :-1] & mask[:, 1:]
    dv = np.abs(np.diff(image, axis=0)).sum(axis=2)[inside_v].mean()
    dh = np.abs(np.diff(image, axis=1)).sum(axis=2)[inside_h].mean()
    return dv, dh


def test_scenes_put_each_texture_on_its_object():
    scenes = draw_two_object_scenes(60, img_size=32, rng=np.random.default_rng(0))
    images = scenes["images"].astype(float) / 255
    assert (scenes["texture"] != scenes["distractor_texture"]).all()
    assert not (scenes["target_mask"] & scenes["distractor_mask"]).any()
    for i in range(60):
        target, distractor = scenes["target_mask"][i], scenes["distractor_mask"][i]
        grey = images[i][target]  # (pixels, 3): the target's two greys, plus noise
        assert np.abs(grey - grey.mean(axis=1, keepdims=True)).max() < 0.2
        colour = images[i][distractor]
        assert (colour.max(axis=1) - colour.min(axis=1)).mean() > 0.4  # saturated
        for mask, label in (
            (target, scenes["texture"][i]),
            (distractor, scenes["distractor_texture"][i]),
        ):
            dv, dh = _orientation(images[i], mask)
            if label == 0:  # horizontal stripes: change from row to row
                assert dv > 2 * dh, (i, dv, dh)
            elif label == 1:
                assert dh > 2 * dv, (i, dv, dh)


def test_scene_labels_are_the_targets_texture_or_quadrant():
    kwargs = dict(img_size=24, num_train=4, num_test=50, seed=2)
    by_texture = load_scenes_data(label="texture", **kwargs)
    by_quadrant = load_scenes_data(label="quadrant", **kwargs)
    raw = draw_two_object_scenes(50, img_size=24, rng=np.random.default_rng([2, 1]))
    assert torch.equal(by_texture.test.tensors[1], torch.from_numpy(raw["texture"]))
    assert torch.equal(by_texture.test.tensors[0], by_quadrant.test.tensors[0])
    assert by_quadrant.class_names == list(QUADRANT_NAMES)
    target = by_quadrant.masks["test"].double()
    centres = [
        (target * torch.arange(24.0).view(*shape)).sum(dim=(1, 2))
        / target.sum(dim=(1, 2))
        for shape in ((24, 1), (1, 24))
    ]  # (y, x) of each target's pixels, from 0
    quadrant = (centres[0] > 11.5).long() * 2 + (centres[1] > 11.5).long()
    assert torch.equal(quadrant, by_quadrant.test.tensors[1])
    torch.testing.assert_close(
        Preprocess(by_texture.preprocessing)(raw["images"][3]),
        by_texture.test.tensors[0][3],
    )
    assert torch.equal(
        by_texture.masks["test_distractor"], torch.from_numpy(raw["distractor_mask"])
    )


def test_scenes_are_determined_by_the_seed():
    a = load_scenes_data(img_size=16, num_train=10, num_test=8, seed=1)
    b = load_scenes_data(img_size=16, num_train=30, num_test=8, seed=1)
    c = load_scenes_data(img_size=16, num_train=10, num_test=8, seed=2)
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])
    assert not torch.equal(a.test.tensors[0], c.test.tensors[0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(label="colour"), "label must be one of"),
        (dict(period=5), "period must be an even int"),
        (dict(period=18), "period must be an even int from 2 to img_size // 2 = 16"),
        (dict(period=True), "period"),
        (dict(img_size=12), "img_size must be an int >= 16"),
        (dict(num_train=2), "num_train"),
        (dict(seed=-2), "seed"),
    ],
)
def test_scenes_reject_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_scenes_data(**kwargs)
    if "label" not in kwargs and "num_train" not in kwargs and "seed" not in kwargs:
        with pytest.raises(ValueError, match=message):
            draw_two_object_scenes(4, rng=np.random.default_rng(0), **kwargs)


def test_scene_draw_rejects_no_images():
    with pytest.raises(ValueError, match="num_images must be an int >= 1, got 0"):
        draw_two_object_scenes(0, rng=np.random.default_rng(0))


def test_data_splits_without_masks_stay_compatible():
    splits = load_digits_data(seed=0)
    assert splits.masks is None
    positional = DataSplits(
        splits.train, splits.test, splits.class_names, splits.preprocessing
    )
    assert positional.masks is None
