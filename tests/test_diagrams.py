"""Tests for going_modular.diagrams: shape diagrams drawn from tensor shapes, and Figure 1."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import FancyArrowPatch, Rectangle  # noqa: E402

from going_modular.diagrams import MAX_LAYERS, figure1, shape_diagram, side  # noqa: E402

pytestmark = pytest.mark.usefixtures("close_figures")  # see conftest.py


def _count(fig: Figure, kind: type) -> int:
    return sum(isinstance(p, kind) for p in fig.axes[0].patches)


def test_two_d_shapes_are_rectangles_with_sizes_on_the_edges():
    stages = [
        [("x_p", (196, 768))],
        [("x_class", (1, 768)), ("x_p E", (196, 768))],
        [("z_0", (197, 768))],
    ]
    fig = shape_diagram(stages, ops=["· E", "concatenate, + E_pos"], title="Equation 1")
    assert isinstance(fig, Figure)
    assert _count(fig, Rectangle) == 4 and _count(fig, FancyArrowPatch) == 2
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(texts) == 4 * 3 + 2  # per shape: label, rows, cols; one per op
    assert {
        "196",
        "197",
        "768",
        "1",
        "x_p",
        "x_class",
        "z_0",
        "· E",
        "concatenate, + E_pos",
    } <= set(texts)
    assert fig.axes[0].get_title() == "Equation 1"


def test_three_d_shape_is_a_stack_with_its_count():
    fig = shape_diagram([[("q", (12, 197, 64))], [("merged", (197, 768))]])
    assert (
        _count(fig, Rectangle) == MAX_LAYERS + 1
    )  # 12 heads drawn as MAX_LAYERS layers
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "×12" in texts and texts.count("197") == 2 and "64" in texts
    fig = shape_diagram(
        [[("A", (3, 4, 4))]]
    )  # fewer heads than MAX_LAYERS: one layer each
    assert _count(fig, Rectangle) == 3 and _count(fig, FancyArrowPatch) == 0


def test_one_d_shape_is_a_bar():
    fig = shape_diagram([[("bias", (768,))]])
    assert _count(fig, Rectangle) == 1
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["768", "bias"]
    (bar,) = fig.axes[0].patches
    assert bar.get_width() == pytest.approx(
        side(768)
    ) and bar.get_height() == pytest.approx(side(1))


def test_sides_grow_with_size_and_small_sizes_stay_visible():
    assert side(1) > 0 and side(3) < side(64) < side(197) < side(768) < side(3072)
    assert side(3072) / side(3) < 20  # both fit in one picture


def test_draws_into_given_axes():
    fig, axes = plt.subplots(1, 2)
    returned = shape_diagram([[("a", (2, 3))]], ax=axes[1])
    assert returned is fig and len(axes[1].patches) == 1 and len(axes[0].patches) == 0


@pytest.mark.parametrize(
    "stages, expected",
    [
        ([], "non-empty sequence of columns"),
        ("z_0", "non-empty sequence of columns"),
        ([[]], "stage 0 must be a non-empty sequence"),
        ([[("z_0", [197, 768])]], "tuple of 1 to 3 positive ints"),
        ([[("z_0", (197, 0))]], "got (197, 0)"),
        ([[("z_0", (197, 768.0))]], "positive ints"),
        ([[("z_0", (True, 768))]], "positive ints"),
        ([[("z_0", (1, 2, 3, 4))]], "got (1, 2, 3, 4)"),
        ([[(0, (2, 3))]], "(label, shape) pair with a str label"),
    ],
)
def test_bad_stages_raise(stages, expected):
    with pytest.raises(ValueError) as err:
        shape_diagram(stages)
    assert expected in str(err.value)


def test_bad_ops_raise_naming_the_expected_count():
    stages = [[("a", (2, 3))], [("b", (3, 2))], [("c", (2, 2))]]
    with pytest.raises(ValueError) as err:
        shape_diagram(stages, ops=["one"])
    assert "one label per arrow (2 for 3 stages)" in str(
        err.value
    ) and "got 1 labels" in str(err.value)
    with pytest.raises(ValueError, match="one label per arrow"):
        shape_diagram(stages, ops="ab")
    with pytest.raises(ValueError, match="str labels"):
        shape_diagram(stages, ops=["one", 2])


def test_figure1_draws_the_model_and_the_block():
    fig = figure1()
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("Transformer encoder" in t for t in texts) and "MLP head" in texts
    assert texts.count("LayerNorm") == 2 and any(
        t.startswith("Multi-head self-attention") for t in texts
    )
    assert {"ch. 1 Patches", "ch. 2 Equation 1", "ch. 5 Equation 4"} <= set(texts)
    assert (
        "0*" in texts and "9" in texts and "10" not in texts
    )  # class token and 9 patches by default


def test_figure1_with_an_image_draws_it_and_its_patches():
    image = np.arange(48 * 48, dtype=float).reshape(48, 48)
    fig = figure1(image, patch_size=16)
    assert len(fig.axes[0].images) == 1 + 9  # the image, then its 3x3 patches
    np.testing.assert_array_equal(
        fig.axes[0].images[2].get_array(), image[:16, 16:32]
    )  # patch 2 in raster order
    with pytest.raises(ValueError, match="at least num_tokens - 1 = 9 patches"):
        figure1(image, patch_size=32)
    with pytest.raises(ValueError, match="num_tokens must be an int >= 2"):
        figure1(num_tokens=1)
