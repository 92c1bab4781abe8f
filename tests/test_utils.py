"""Tests for going_modular.utils: seeding, devices, checkpoints and plots."""
import json
import random

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix
from torch.utils.data import DataLoader, TensorDataset

import going_modular.utils as utils
from going_modular.data import UnreadableImageError, build_transform, make_preprocessing
from going_modular.utils import (CheckpointMismatchError, confusion_matrix, get_device, load_model, load_weights,
                                 plot_confusion_matrix, plot_curves, plot_image_prediction, plot_predictions,
                                 predict, predict_image, read_checkpoint_config, save_model, set_seed,
                                 to_displayable)
from going_modular.vit import ViT

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)

SPEC = make_preprocessing(8, channels=1, max_value=16.0, mean=[0.5], std=[0.5])
CLASSES = [str(d) for d in range(10)]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def tiny_vit(**overrides) -> ViT:
    torch.manual_seed(0)
    return ViT(**dict(img_size=8, patch_size=4, in_channels=1, num_classes=10, embed_dim=16, depth=2,
                      num_heads=2) | overrides)


def trained_like(model: ViT) -> ViT:
    """Give every parameter non-trivial values (a fresh ViT has a zero head)."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.5)
    return model.eval()


def metadata() -> dict:
    return {"class_names": CLASSES, "preprocessing": SPEC, "note": "test"}


def test_set_seed_repeats_every_generator():
    def draw() -> tuple:
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    set_seed(123)
    first = draw()
    set_seed(123)
    assert draw() == first
    set_seed(124)
    assert draw() != first
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="seed"):
            set_seed(bad)


def test_get_device():
    assert get_device("cpu") == torch.device("cpu")
    assert get_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ValueError, match="expected 'auto'"):
        get_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            get_device("cuda")


def test_round_trip_gives_identical_logits(tmp_path):
    model = trained_like(tiny_vit())
    path = save_model(model, tmp_path / "ckpt", metadata())
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary folder left
    loaded, meta = load_model(path)
    x = torch.randn(5, 1, 8, 8)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))
    assert meta == metadata() and loaded.config == model.config and not loaded.training


def test_checkpoint_files_follow_the_contract(tmp_path):
    model = trained_like(tiny_vit())
    path = save_model(model, tmp_path / "ckpt", metadata())
    document = json.loads((path / "config.json").read_text())
    assert document == {"format": "going_modular.vit", "version": 1, "model": model.config, "metadata": metadata()}
    tensors = load_file(path / "model.safetensors")
    assert tensors.keys() == model.state_dict().keys()
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert all(torch.equal(tensors[k], v) for k, v in model.state_dict().items())


def test_saving_again_replaces_the_checkpoint(tmp_path):
    save_model(trained_like(tiny_vit()), tmp_path / "ckpt", metadata())
    second = trained_like(tiny_vit(depth=1))
    save_model(second, tmp_path / "ckpt", metadata())
    loaded, _ = load_model(tmp_path / "ckpt")
    assert loaded.config["depth"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_a_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    model = trained_like(tiny_vit())
    save_model(model, tmp_path / "ckpt", metadata())

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(utils, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_model(tiny_vit(depth=1), tmp_path / "ckpt", metadata())
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert load_model(tmp_path / "ckpt")[0].config == model.config


def test_mismatched_model_lists_every_difference(tmp_path):
    save_model(trained_like(tiny_vit()), tmp_path / "ckpt", metadata())
    other = tiny_vit(embed_dim=32, depth=1)
    with pytest.raises(CheckpointMismatchError) as info:
        load_weights(other, tmp_path / "ckpt")
    message = str(info.value)
    assert "embed_dim: checkpoint 16, model 32" in message and "depth: checkpoint 2, model 1" in message
    assert "unexpected tensor blocks.1.ln_1.weight" in message
    assert "tensor class_token: checkpoint shape (1, 1, 16), model (1, 1, 32)" in message


def test_load_weights_into_a_matching_model(tmp_path):
    model = trained_like(tiny_vit())
    save_model(model, tmp_path / "ckpt", metadata())
    fresh = tiny_vit()
    assert load_weights(fresh, tmp_path / "ckpt") == metadata()
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize("bad_metadata, error, message", [
    ({"class_names": CLASSES}, ValueError, "preprocessing"),
    ({"class_names": CLASSES[:3], "preprocessing": SPEC}, ValueError, "class_names"),
    ({"class_names": CLASSES, "preprocessing": SPEC, "when": object()}, TypeError, "JSON serializable"),
])
def test_bad_saves_write_nothing(tmp_path, bad_metadata, error, message):
    with pytest.raises(error, match=message):
        save_model(tiny_vit(), tmp_path / "ckpt", bad_metadata)
    assert list(tmp_path.iterdir()) == []


def test_only_models_with_a_config_can_be_saved(tmp_path):
    with pytest.raises(TypeError, match="config"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "ckpt", metadata())


def test_read_checkpoint_config_checks_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint folder"):
        read_checkpoint_config(tmp_path)
    path = save_model(tiny_vit(), tmp_path / "ckpt", metadata())
    document = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(document | {"version": 99}))
    with pytest.raises(ValueError, match="version 99"):
        load_model(path)


def test_confusion_matrix_agrees_with_scikit_learn():
    generator = torch.Generator().manual_seed(0)
    labels, predictions = torch.randint(0, 4, (200,), generator=generator), torch.randint(0, 4, (200,), generator=generator)
    matrix = confusion_matrix(predictions, labels, num_classes=4)
    np.testing.assert_array_equal(matrix.numpy(), sklearn_confusion_matrix(labels, predictions, labels=range(4)))
    with pytest.raises(ValueError, match="equal length"):
        confusion_matrix(predictions[:5], labels, 4)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        confusion_matrix(predictions, labels, 3)


def test_predict_returns_argmax_and_labels():
    model = trained_like(tiny_vit())
    x, y = torch.randn(10, 1, 8, 8), torch.arange(10)
    predictions, labels = predict(model, DataLoader(TensorDataset(x, y), batch_size=3))
    with torch.inference_mode():
        assert torch.equal(predictions, model(x).argmax(1))
    assert torch.equal(labels, y)


def test_plot_curves_draws_both_splits():
    history = {"train_loss": [2, 1, 0.5], "test_loss": [2, 1.2, 0.9], "train_accuracy": [0.3, 0.6, 0.9],
               "test_accuracy": [0.3, 0.5, 0.7]}
    figure = plot_curves(history)
    assert [ax.get_title() for ax in figure.axes] == ["loss", "accuracy"]
    assert all(len(ax.get_lines()) == 2 and len(ax.get_lines()[0].get_xdata()) == 3 for ax in figure.axes)


def test_plot_predictions_titles_true_and_predicted():
    model = trained_like(tiny_vit())
    x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 10, (12,))
    figure = plot_predictions(model, TensorDataset(x, y), CLASSES, SPEC, n=5)
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert len(titles) == 5 and all(" / " in t for t in titles)
    with pytest.raises(ValueError, match="n must be"):
        plot_predictions(model, TensorDataset(x, y), CLASSES, SPEC, n=13)


def test_plot_confusion_matrix_annotates_counts():
    matrix = torch.tensor([[3, 1], [0, 4]])
    figure = plot_confusion_matrix(matrix, ["a", "b"])
    assert sorted(t.get_text() for t in figure.axes[0].texts) == ["0", "1", "3", "4"]


def test_to_displayable_inverts_the_normalisation():
    raw = np.arange(64).reshape(8, 8) % 17
    shown = to_displayable(build_transform(SPEC)(raw), SPEC)
    np.testing.assert_allclose(shown, raw / 16.0, atol=1e-6)


def test_predict_image_from_a_file(tmp_path):
    model = trained_like(tiny_vit())
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "digit.png")
    spec = make_preprocessing(8, channels=1, max_value=255.0, mean=[0.5], std=[0.5])
    name, probabilities = predict_image(model, tmp_path / "digit.png", spec, CLASSES)
    with torch.inference_mode():
        expected = model(build_transform(spec)(pixels)[None]).softmax(1)[0]
    torch.testing.assert_close(probabilities, expected)
    assert name == CLASSES[int(expected.argmax())]
    figure = plot_image_prediction(model, tmp_path / "digit.png", spec, CLASSES)
    assert figure.axes[0].get_title().startswith(f"predicted: {name} (")


def test_predict_image_names_an_unreadable_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(UnreadableImageError, match="bad.png"):
        predict_image(tiny_vit(), tmp_path / "bad.png", SPEC, CLASSES)
