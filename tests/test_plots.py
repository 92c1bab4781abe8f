"""Tests for going_modular.plots: predictions, the confusion matrix and the figures."""

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix
from torch.utils.data import DataLoader, TensorDataset

from conftest import DIGITS_CLASSES, DIGITS_SPEC, DIGITS_VIT
from going_modular.data import UnreadableImageError, build_transform, make_preprocessing
from going_modular.plots import (
    confusion_matrix,
    plot_confusion_matrix,
    plot_curves,
    plot_image_prediction,
    plot_predictions,
    predict,
    predict_image,
    to_displayable,
)
from going_modular.vit import ViT

matplotlib.use("Agg")

pytestmark = pytest.mark.usefixtures("close_figures")  # see conftest.py


def test_confusion_matrix_agrees_with_scikit_learn():
    generator = torch.Generator().manual_seed(0)
    labels, predictions = (
        torch.randint(0, 4, (200,), generator=generator),
        torch.randint(0, 4, (200,), generator=generator),
    )
    matrix = confusion_matrix(predictions, labels, num_classes=4)
    np.testing.assert_array_equal(
        matrix.numpy(), sklearn_confusion_matrix(labels, predictions, labels=range(4))
    )
    with pytest.raises(ValueError, match="equal length"):
        confusion_matrix(predictions[:5], labels, 4)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        confusion_matrix(predictions, labels, 3)


def test_predict_returns_argmax_and_labels(random_digits_vit):
    model = random_digits_vit
    x, y = torch.randn(10, 1, 8, 8), torch.arange(10)
    predictions, labels = predict(model, DataLoader(TensorDataset(x, y), batch_size=3))
    with torch.inference_mode():
        assert torch.equal(predictions, model(x).argmax(1))
    assert torch.equal(labels, y)


def test_plot_curves_draws_both_splits():
    history = {
        "train_loss": [2, 1, 0.5],
        "test_loss": [2, 1.2, 0.9],
        "train_accuracy": [0.3, 0.6, 0.9],
        "test_accuracy": [0.3, 0.5, 0.7],
    }
    figure = plot_curves(history)
    assert [ax.get_title() for ax in figure.axes] == ["loss", "accuracy"]
    assert all(
        len(ax.get_lines()) == 2 and len(ax.get_lines()[0].get_xdata()) == 3
        for ax in figure.axes
    )


def test_plot_predictions_titles_true_and_predicted(random_digits_vit):
    model = random_digits_vit
    x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 10, (12,))
    figure = plot_predictions(
        model, TensorDataset(x, y), DIGITS_CLASSES, DIGITS_SPEC, n=5
    )
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert len(titles) == 5 and all(" / " in t for t in titles)
    with pytest.raises(ValueError, match="n must be"):
        plot_predictions(model, TensorDataset(x, y), DIGITS_CLASSES, DIGITS_SPEC, n=13)


def test_plot_confusion_matrix_annotates_counts():
    matrix = torch.tensor([[3, 1], [0, 4]])
    figure = plot_confusion_matrix(matrix, ["a", "b"])
    assert sorted(t.get_text() for t in figure.axes[0].texts) == ["0", "1", "3", "4"]


def test_to_displayable_inverts_the_normalisation():
    raw = np.arange(64).reshape(8, 8) % 17
    shown = to_displayable(build_transform(DIGITS_SPEC)(raw), DIGITS_SPEC)
    np.testing.assert_allclose(shown, raw / 16.0, atol=1e-6)


def test_predict_image_from_a_file(random_digits_vit, tmp_path):
    model = random_digits_vit
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "digit.png")
    spec = make_preprocessing(8, channels=1, max_value=255.0, mean=[0.5], std=[0.5])
    name, probabilities = predict_image(
        model, tmp_path / "digit.png", spec, DIGITS_CLASSES
    )
    with torch.inference_mode():
        expected = model(build_transform(spec)(pixels)[None]).softmax(1)[0]
    torch.testing.assert_close(probabilities, expected)
    assert name == DIGITS_CLASSES[int(expected.argmax())]
    figure = plot_image_prediction(model, tmp_path / "digit.png", spec, DIGITS_CLASSES)
    assert figure.axes[0].get_title().startswith(f"predicted: {name} (")


def test_predict_image_names_an_unreadable_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(UnreadableImageError, match="bad.png"):
        predict_image(
            ViT(DIGITS_VIT), tmp_path / "bad.png", DIGITS_SPEC, DIGITS_CLASSES
        )
