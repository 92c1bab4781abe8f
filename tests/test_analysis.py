"""Tests for going_modular.analysis on hand-built inputs whose answers are known in closed form."""

import itertools

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from going_modular.analysis import (
    attention_rollout,
    auroc,
    class_token_map,
    embedding_filter_components,
    inspect_scenes_vit,
    mean_attention_distance,
    patch_centres,
    patch_coverage,
    plot_attention_distance,
    plot_filter_components,
    plot_position_similarity,
    plot_rollout,
    position_embedding_similarity,
)
from going_modular.data import load_scenes_data
from going_modular.variants import vit_config
from going_modular.vit import ViT, ViTConfig

matplotlib.use("Agg")


def random_rows(*shape: int, seed: int = 0) -> torch.Tensor:
    """Random row-stochastic matrices (..., T, T), as softmax attention gives."""
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)).softmax(
        dim=-1
    )


CONFIG = ViTConfig(
    img_size=8,
    patch_size=2,
    in_channels=3,
    num_classes=2,
    embed_dim=16,
    depth=2,
    num_heads=2,
)


def test_rollout_of_identity_attention_is_the_identity():
    eye = torch.eye(5).expand(2, 3, 5, 5)
    for residual in (True, False):
        torch.testing.assert_close(
            attention_rollout([eye, eye, eye], residual=residual),
            torch.eye(5).expand(2, 5, 5),
        )


def test_rollout_of_one_layer_without_residual_is_the_head_mean():
    maps = random_rows(2, 3, 5, 5)
    torch.testing.assert_close(
        attention_rollout([maps], residual=False), maps.mean(dim=1)
    )


def test_rollout_multiplies_the_last_layer_leftmost():
    first, second = random_rows(1, 2, 4, 4, seed=1), random_rows(1, 2, 4, 4, seed=2)
    a1, a2 = first[0].mean(0), second[0].mean(0)
    assert not torch.allclose(a2 @ a1, a1 @ a2), (
        "the test needs matrices that do not commute"
    )
    torch.testing.assert_close(
        attention_rollout([first, second], residual=False)[0], a2 @ a1
    )
    r1, r2 = (0.5 * a + 0.5 * torch.eye(4) for a in (a1, a2))  # rows already sum to 1
    torch.testing.assert_close(attention_rollout([first, second])[0], r2 @ r1)


def test_rollout_renormalises_rows_with_the_residual():
    weights = torch.tensor([[2.0, 0.0], [1.0, 1.0]]).expand(
        1, 1, 2, 2
    )  # rows summing to 2
    expected = torch.tensor(
        [[1.0, 0.0], [0.5 / 1.5, 1.0 / 1.5]]
    )  # (0.5 A + 0.5 I) / row sums
    torch.testing.assert_close(attention_rollout([weights])[0], expected)


@pytest.mark.parametrize(
    "maps, message",
    [
        ([], "non-empty list"),
        (torch.eye(3).expand(1, 1, 3, 3), "non-empty list"),
        ([torch.eye(3)], r"maps\[0\] must be a tensor \(B, h, T, T\)"),
        ([torch.zeros(1, 1, 3, 4)], r"maps\[0\]"),
        (
            [torch.zeros(1, 2, 3, 3), torch.zeros(1, 1, 3, 3)],
            r"maps\[1\] has \(1, 1, 3, 3\)",
        ),
    ],
)
def test_rollout_rejects_bad_maps(maps, message):
    with pytest.raises(ValueError, match=message):
        attention_rollout(maps)


def self_attention(tokens: int) -> torch.Tensor:
    return torch.eye(tokens).expand(2, 3, tokens, tokens)


def test_attending_to_oneself_has_distance_zero():
    distances = mean_attention_distance(
        [self_attention(10)] * 2, grid_size=3, patch_size=4
    )
    assert distances.shape == (2, 3)
    torch.testing.assert_close(distances, torch.zeros(2, 3))


def test_uniform_attention_gives_the_mean_pairwise_distance_of_the_grid():
    g, p = 4, 5
    centres = [(i, j) for i in range(g) for j in range(g)]
    brute = (
        np.mean(
            [
                np.hypot(a[0] - b[0], a[1] - b[1])
                for a, b in itertools.product(centres, centres)
            ]
        )
        * p
    )
    uniform = torch.rand(1, 2, 1 + g * g, 1 + g * g)
    uniform[:, :, 1:, 1:] = 1.0  # the class-token row and column must not count
    distances = mean_attention_distance([uniform], g, p)
    torch.testing.assert_close(distances, torch.full((1, 2), float(brute)))


def test_attention_one_patch_to_the_right_is_one_patch_away():
    gh, gw, p = 3, 4, 6
    maps = torch.zeros(1, 1, 1 + gh * gw, 1 + gh * gw)
    maps[0, 0, 0, 0] = 1.0
    for i, j in itertools.product(range(gh), range(gw)):
        right = i * gw + (j + 1) % gw  # the last column wraps round to the first
        maps[0, 0, 1 + i * gw + j, 1 + right] = 1.0
    distances = mean_attention_distance([maps], (gh, gw), (p, p))
    expected = (
        (gw - 1) * p + (gw - 1) * p
    ) / gw  # gw - 1 queries move one patch, one moves back gw - 1 patches
    torch.testing.assert_close(distances, torch.tensor([[expected]]))
    wide = mean_attention_distance(
        [maps], (gh, gw), (p, 2 * p)
    )  # only the width of a patch matters here
    torch.testing.assert_close(wide, torch.tensor([[2 * expected]]))


def test_patch_centres_are_in_raster_order():
    torch.testing.assert_close(
        patch_centres((2, 3), (4, 2)).float(),
        torch.tensor([[2.0, 1], [2, 3], [2, 5], [6, 1], [6, 3], [6, 5]]),
    )


def test_mean_attention_distance_rejects_bad_input():
    with pytest.raises(ValueError, match=r"T = 1 \+ 3\*3 = 10 tokens, got T = 9"):
        mean_attention_distance([self_attention(9)], 3, 4)
    with pytest.raises(ValueError, match="non-empty list"):
        mean_attention_distance([], 3, 4)
    only_class = torch.zeros(1, 1, 5, 5)
    only_class[..., 0] = 1.0
    with pytest.raises(ValueError, match="zero attention"):
        mean_attention_distance([only_class], 2, 4)
    with pytest.raises(ValueError, match="grid_size"):
        mean_attention_distance([self_attention(10)], 0, 4)


def test_position_embedding_similarity_of_orthonormal_embeddings_is_the_identity():
    model = ViT(CONFIG, embed_dim=16)  # 4x4 grid: 16 patches, D = 16
    q, _ = torch.linalg.qr(
        torch.randn(16, 16, generator=torch.Generator().manual_seed(0))
    )
    with torch.no_grad():
        model.position_embedding[0, 1:] = 3.0 * q  # orthogonal rows of length 3
        model.position_embedding[0, 0] = 100.0  # the class token's row must be left out
    similarity = position_embedding_similarity(model)
    assert similarity.shape == (4, 4, 4, 4)
    torch.testing.assert_close(
        similarity.reshape(16, 16), torch.eye(16), atol=1e-6, rtol=0
    )


def test_position_embedding_similarity_is_the_cosine_in_raster_order():
    model = ViT(CONFIG)
    with torch.no_grad():
        model.position_embedding.zero_()
        model.position_embedding[0, 1 + 0 * 4 + 1, :2] = torch.tensor(
            [1.0, 0.0]
        )  # patch (0, 1)
        model.position_embedding[0, 1 + 2 * 4 + 3, :2] = torch.tensor(
            [1.0, 1.0]
        )  # patch (2, 3)
    similarity = position_embedding_similarity(model)
    assert (
        abs(similarity[0, 1, 2, 3].item() - 2**-0.5) < 1e-6
        and abs(similarity[2, 3, 0, 1].item() - 2**-0.5) < 1e-6
    )


def test_filter_components_recover_known_directions():
    model = ViT(CONFIG, embed_dim=32)  # filters: 32 vectors of length C*P*P = 12
    rng = np.random.default_rng(0)
    directions, _ = np.linalg.qr(
        rng.normal(size=(12, 3))
    )  # three orthonormal directions (12, 3)
    scores = rng.normal(size=(32, 3)) * np.array(
        [5.0, 2.0, 0.5]
    )  # variances far apart: a unique order
    filters = scores @ directions.T + rng.normal(
        size=12
    )  # rank 3 plus a common offset that centring removes
    with torch.no_grad():
        model.patch_embedding.proj.weight.copy_(
            torch.tensor(filters).reshape(32, 3, 2, 2)
        )
    components = embedding_filter_components(model, k=3)
    assert components.shape == (3, 3, 2, 2)
    centred = filters - filters.mean(axis=0)
    _, _, reference = np.linalg.svd(
        centred, full_matrices=False
    )  # an independent reference
    ours = components.reshape(3, 12).double().numpy()
    np.testing.assert_allclose(
        np.abs((ours * reference[:3]).sum(axis=1)), np.ones(3), atol=1e-5
    )  # equal up to sign
    span = directions @ directions.T  # projector on the known directions
    np.testing.assert_allclose(ours @ span, ours, atol=1e-5)
    largest = ours[np.arange(3), np.abs(ours).argmax(axis=1)]
    assert (largest > 0).all(), (
        "each component is signed so that its largest entry is positive"
    )


def test_filter_components_reject_bad_k_and_conv_stems():
    model = ViT(CONFIG)  # D = 16, C*P*P = 12
    assert embedding_filter_components(model, k=12).shape == (12, 3, 2, 2)
    for k in (0, 13, 2.0):
        with pytest.raises(
            ValueError, match=r"k must be an int in \[1, min\(D, C\*P\*P\) = 12\]"
        ):
            embedding_filter_components(model, k=k)
    stem = ViT(
        img_size=16,
        patch_size=16,
        num_classes=2,
        embed_dim=32,
        depth=1,
        num_heads=2,
        conv_stem=True,
    )
    with pytest.raises(ValueError, match="conv stem"):
        embedding_filter_components(stem)


def test_class_token_map_and_patch_coverage():
    rollout = torch.zeros(1, 5, 5)
    rollout[0, 0] = torch.tensor(
        [0.6, 0.1, 0.1, 0.0, 0.2]
    )  # class token row: 0.4 on the patches
    heat = class_token_map(rollout, 2)
    torch.testing.assert_close(heat, torch.tensor([[[0.25, 0.25], [0.0, 0.5]]]))
    with pytest.raises(ValueError, match="T = 1 \\+ 3\\*3"):
        class_token_map(rollout, 3)
    masks = torch.zeros(1, 4, 6, dtype=torch.bool)
    masks[0, :2, :3] = True  # the whole first patch of a 2x2 grid of 2x3 patches
    masks[0, 3, 3] = True  # one pixel of the last
    torch.testing.assert_close(
        patch_coverage(masks, (2, 3)), torch.tensor([[[1.0, 0.0], [0.0, 1 / 6]]])
    )
    with pytest.raises(ValueError, match="multiples of the patch size"):
        patch_coverage(masks, 4)


@pytest.mark.usefixtures("close_figures")
def test_plots_return_figures():
    model = ViT(CONFIG)
    maps = model.forward_attention(torch.randn(2, 3, 8, 8))
    figures = [
        plot_filter_components(embedding_filter_components(model, k=5)),
        plot_position_similarity(position_embedding_similarity(model)),
        plot_attention_distance(mean_attention_distance(maps, 4, 2)),
        plot_rollout(
            np.zeros((2, 8, 8, 3)),
            class_token_map(attention_rollout(maps), 4),
            titles=["a", "b"],
        ),
    ]
    assert all(isinstance(fig, Figure) for fig in figures)


def test_auroc_matches_the_pairwise_definition():
    generator = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 4, (5, 30), generator=generator).float()  # ties
    positive = torch.rand(5, 30, generator=generator) < 0.4
    pairs = [
        (s[p][:, None] > s[~p][None]).double().mean()
        + 0.5 * (s[p][:, None] == s[~p][None]).double().mean()
        for s, p in zip(scores, positive, strict=True)
    ]  # P(positive above negative) + half P(tie), over all pairs
    torch.testing.assert_close(auroc(scores, positive), torch.stack(pairs))
    ordered = torch.arange(6.0)[None]
    assert auroc(ordered, ordered > 3).item() == 1.0
    assert auroc(ordered, ordered < 2).item() == 0.0
    assert auroc(torch.zeros(1, 6), ordered > 3).item() == 0.5


@pytest.mark.parametrize(
    "scores, positive, message",
    [
        (torch.zeros(4), torch.zeros(4, dtype=torch.bool), "expected scores"),
        (torch.zeros(2, 4), torch.zeros(2, 4), "bool mask"),
        (
            torch.zeros(2, 4),
            torch.zeros(2, 4, dtype=torch.bool),
            "positives and negatives",
        ),
        (
            torch.zeros(1, 3),
            torch.ones(1, 3, dtype=torch.bool),
            "positives and negatives",
        ),
    ],
)
def test_auroc_rejects_bad_input(scores, positive, message):
    with pytest.raises(ValueError, match=message):
        auroc(scores, positive)


def test_inspect_scenes_measures_a_model_on_target_and_distractor():
    data = load_scenes_data(img_size=16, num_train=4, num_test=16, seed=0)
    torch.manual_seed(0)
    model = ViT(vit_config("Micro/4", img_size=16, num_classes=4)).eval()
    metrics = inspect_scenes_vit(model, data)
    assert (
        0 < metrics["rollout_on_target"] < 1
        and 0 < metrics["rollout_on_distractor"] < 1
    )
    assert 0 <= metrics["rollout_auroc"] <= 1
    assert torch.tensor(metrics["attention_distance"]).shape == (4, 8)  # (L, h)


def test_inspect_scenes_finds_a_class_token_that_reads_the_target(monkeypatch):
    data = load_scenes_data(img_size=16, num_train=4, num_test=16, seed=0)
    model = ViT(vit_config("Micro/4", img_size=16, num_classes=4)).eval()
    coverage = patch_coverage(data.masks["test"], 4).flatten(1)  # (B, 16)
    weights = coverage / coverage.sum(dim=1, keepdim=True)
    maps = torch.eye(17).repeat(16, 8, 1, 1)  # (B, h, T, T): every token reads itself
    maps[:, :, 0] = torch.cat([torch.zeros(16, 1), weights], dim=1)[:, None]
    monkeypatch.setattr(model, "forward_attention", lambda images: [maps] * 4)
    metrics = inspect_scenes_vit(model, data)
    # the rollout's patch part is `weights` itself, so its share on the target is sum(c^2)/sum(c)
    expected = ((coverage**2).sum(dim=1) / coverage.sum(dim=1)).mean().item()
    assert metrics["rollout_on_target"] == pytest.approx(expected, rel=1e-5)
    assert metrics["first_layer_on_target"] == pytest.approx(expected, rel=1e-5)
    assert metrics["rollout_target_first"] == 1.0 and metrics["rollout_auroc"] > 0.95


@pytest.mark.usefixtures("close_figures")
def test_plot_rollout_outlines_the_masks():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, 2:5, 2:5] = True
    fig = plot_rollout(
        np.zeros((2, 8, 8, 3)), torch.rand(2, 4, 4), outlines=[masks, ~masks]
    )
    assert (
        sum(len(ax.collections) for ax in fig.axes) >= 8
    )  # 2 outlines x 2 rows x 2 images
    with pytest.raises(ValueError, match="at most 3 outlines"):
        plot_rollout(np.zeros((1, 8, 8, 3)), torch.rand(1, 4, 4), outlines=[masks] * 4)
