"""Tests for going_modular.checkpoint: the format, the one reader, saving and loading."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file

from conftest import (
    DIGITS_CLASSES,
    DIGITS_SPEC,
    DIGITS_VIT,
    corrupt,
    edit_config,
    randomise_all,
)
from going_modular.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    CheckpointMismatchError,
    load_model,
    load_weights,
    read_checkpoint,
    read_safetensors,
    save_model,
)
from going_modular.vit import ViT


def metadata() -> dict:
    return {"class_names": DIGITS_CLASSES, "preprocessing": DIGITS_SPEC, "note": "test"}


@pytest.fixture
def checkpoint(random_digits_vit, tmp_path) -> Path:
    """``random_digits_vit`` saved in tmp_path/ckpt (a test asking for both gets the model it holds)."""
    return save_model(random_digits_vit, tmp_path / "ckpt", metadata())


def test_round_trip_gives_identical_logits(random_digits_vit, checkpoint, tmp_path):
    model, path = random_digits_vit, checkpoint
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary folder left
    loaded, meta = load_model(path)
    x = torch.randn(5, 1, 8, 8)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))
    assert meta == metadata() and loaded.config == model.config and not loaded.training


def test_checkpoint_files_follow_the_contract(random_digits_vit, checkpoint):
    model, path = random_digits_vit, checkpoint
    document = json.loads((path / CONFIG_FILE).read_text())
    assert document == {
        "format": "going_modular.vit",
        "version": 1,
        "model": model.config.to_dict(),
        "metadata": metadata(),
    }
    tensors = load_file(path / WEIGHTS_FILE)
    assert tensors.keys() == model.state_dict().keys()
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert all(torch.equal(tensors[k], v) for k, v in model.state_dict().items())


def test_the_reader_agrees_with_the_safetensors_library(checkpoint):
    document, arrays = read_checkpoint(checkpoint)
    reference = load_file(checkpoint / WEIGHTS_FILE)
    assert arrays.keys() == reference.keys()
    assert all(np.array_equal(arrays[k], reference[k].numpy()) for k in arrays)
    for path in (checkpoint / CONFIG_FILE, checkpoint / WEIGHTS_FILE, str(checkpoint)):
        assert read_checkpoint(path)[0] == document


@pytest.mark.slow
def test_the_module_imports_and_reads_without_torch(checkpoint):
    probe = (
        "import sys\nfrom going_modular.checkpoint import read_checkpoint\n"
        f"read_checkpoint({str(checkpoint)!r})\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_saving_again_replaces_the_checkpoint(checkpoint, tmp_path):
    save_model(
        randomise_all(ViT(DIGITS_VIT, depth=1), 0.5, replace=True),
        checkpoint,
        metadata(),
    )
    loaded, _ = load_model(checkpoint)
    assert loaded.config.depth == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_a_failed_save_keeps_the_old_checkpoint(
    random_digits_vit, checkpoint, tmp_path, monkeypatch
):
    import safetensors.torch

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_model(ViT(DIGITS_VIT, depth=1), checkpoint, metadata())
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert load_model(checkpoint)[0].config == random_digits_vit.config


def test_mismatched_model_lists_every_difference(checkpoint):
    with pytest.raises(CheckpointMismatchError) as info:
        load_weights(ViT(DIGITS_VIT, embed_dim=32, depth=1), checkpoint)
    message = str(info.value)
    assert (
        "embed_dim: checkpoint 16, model 32" in message
        and "depth: checkpoint 2, model 1" in message
    )
    assert "unexpected tensor blocks.1.ln_1.weight" in message
    assert (
        "tensor class_token: checkpoint shape (1, 1, 16), model (1, 1, 32)" in message
    )
    assert isinstance(info.value, CheckpointError) and isinstance(
        info.value, ValueError
    )


def test_load_weights_into_a_matching_model(random_digits_vit, checkpoint):
    fresh = ViT(DIGITS_VIT)
    assert load_weights(fresh, checkpoint) == metadata()
    saved = random_digits_vit.state_dict().values()
    assert all(
        torch.equal(a, b)
        for a, b in zip(fresh.state_dict().values(), saved, strict=True)
    )


@pytest.mark.parametrize(
    "bad_metadata, error, message",
    [
        ({"class_names": DIGITS_CLASSES}, ValueError, "preprocessing"),
        (
            {"class_names": DIGITS_CLASSES[:3], "preprocessing": DIGITS_SPEC},
            ValueError,
            "class_names",
        ),
        (
            {
                "class_names": DIGITS_CLASSES,
                "preprocessing": DIGITS_SPEC,
                "when": object(),
            },
            TypeError,
            "JSON serializable",
        ),
    ],
)
def test_bad_saves_write_nothing(tmp_path, bad_metadata, error, message):
    with pytest.raises(error, match=message):
        save_model(ViT(DIGITS_VIT), tmp_path / "ckpt", bad_metadata)
    assert list(tmp_path.iterdir()) == []


def test_only_going_modular_vits_can_be_saved(tmp_path):
    with pytest.raises(TypeError, match="expected a going_modular ViT, got Linear"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "ckpt", metadata())


@pytest.mark.parametrize("missing", [CONFIG_FILE, WEIGHTS_FILE])
def test_missing_files_are_file_not_found(checkpoint, missing):
    (checkpoint / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        read_checkpoint(checkpoint)
    with pytest.raises(FileNotFoundError):
        load_model(checkpoint.parent / "nowhere")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(format="timm"), "format"),
        (lambda d: d.update(version=99), "version 99"),
        (lambda d: d["model"].pop("num_heads"), "num_heads"),
        (lambda d: d.update(model=[1, 2]), "'model' must be an object"),
        (lambda d: d.pop("metadata"), "'metadata' must be an object"),
    ],
)
def test_invalid_configs_are_refused_by_every_loader(checkpoint, edit, message):
    edit_config(checkpoint, edit)
    for load in (
        read_checkpoint,
        load_model,
        lambda p: load_weights(ViT(DIGITS_VIT), p),
    ):
        with pytest.raises(CheckpointError, match=message):
            load(checkpoint)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda d: d["model"].update(em9ed_dim=64),
            "unexpected keyword argument 'em9ed_dim'",
        ),  # a corrupted key
        (
            lambda d: d["model"].update(num_heads=5),
            "embed_dim must be divisible by num_heads",
        ),
        (lambda d: d["model"].update(drop_rate=-1), "drop_rate must be in"),
        (lambda d: d["model"].update(global_pool="max"), "global_pool must be"),
    ],
)
def test_configs_that_vitconfig_refuses_are_checkpoint_errors_naming_the_file(
    checkpoint, edit, message
):
    edit_config(checkpoint, edit)
    with pytest.raises(
        CheckpointError,
        match=f"{CONFIG_FILE}: 'model' is no valid ViTConfig: .*{message}",
    ):
        load_model(checkpoint)


def test_malformed_json_is_refused(checkpoint):
    (checkpoint / CONFIG_FILE).write_text('{"format": "going_modular.vit", ')
    with pytest.raises(CheckpointError, match="JSON"):
        read_checkpoint(checkpoint)


@pytest.mark.parametrize(
    "case",
    [
        "truncated",
        "short",
        "huge-header-length",
        "not-json",
        "bad-offsets",
        "bad-dtype",
        "no-shape",
    ],
)
def test_malformed_safetensors_are_refused(checkpoint, case):
    file = checkpoint / WEIGHTS_FILE
    file.write_bytes(corrupt(file.read_bytes(), case))
    with pytest.raises(CheckpointError, match=WEIGHTS_FILE):
        read_checkpoint(checkpoint)


def test_read_safetensors_reads_every_dtype_and_widens_bfloat16(tmp_path):
    arrays = {
        "f64": np.arange(6, dtype=np.float64).reshape(2, 3),
        "f16": np.ones(3, np.float16),
        "i64": np.arange(4, dtype=np.int64),
        "u8": np.arange(5, dtype=np.uint8),
        "b": np.array([True, False]),
    }
    save_numpy(arrays, tmp_path / "a.safetensors")
    read = read_safetensors(tmp_path / "a.safetensors")
    assert all(
        read[k].dtype == v.dtype and np.array_equal(read[k], v)
        for k, v in arrays.items()
    )
    from safetensors.torch import save_file

    values = torch.tensor([1.0, -2.5, 3.140625, 1e-3])
    save_file({"x": values.to(torch.bfloat16)}, tmp_path / "b.safetensors")
    widened = read_safetensors(tmp_path / "b.safetensors")["x"]
    assert widened.dtype == np.float32
    np.testing.assert_array_equal(widened, values.to(torch.bfloat16).float().numpy())


def test_global_pool_is_saved_and_older_checkpoints_mean_the_class_token(tmp_path):
    torch.manual_seed(0)
    pooled = randomise_all(ViT(DIGITS_VIT, global_pool="avg"), std=0.1)
    folder = save_model(pooled, tmp_path / "avg", metadata())
    model, _ = load_model(folder)
    x = torch.randn(2, 1, 8, 8)
    assert model.config.global_pool == "avg"
    torch.testing.assert_close(model(x), pooled.eval()(x))
    # A checkpoint written before global_pool existed: its config has no such key, and it means "token".
    token = save_model(ViT(DIGITS_VIT), tmp_path / "old", metadata())
    edit_config(token, lambda d: d["model"].pop("global_pool"))
    assert load_model(token)[0].config.global_pool == "token"
    with pytest.raises(
        CheckpointMismatchError,
        match="hyperparameter global_pool: checkpoint 'token', model 'avg'",
    ):
        load_weights(ViT(DIGITS_VIT, global_pool="avg"), token)


def test_mutated_config_json_loads_or_is_a_checkpoint_error(checkpoint):
    """500 seeded one-character mutations of config.json (keys, values, syntax): none may escape as a bare
    TypeError or KeyError from inside the model; each either loads or is a CheckpointError naming the file."""
    original = (checkpoint / CONFIG_FILE).read_text()
    rng = np.random.default_rng(0)
    alphabet = 'abcdefghijklmnopqrstuvwxyz_0123456789.-"{}[],: '
    outcomes = {"loaded": 0, "refused": 0}
    for _ in range(500):
        text = list(original)
        text[rng.integers(len(text))] = alphabet[rng.integers(len(alphabet))]
        (checkpoint / CONFIG_FILE).write_text("".join(text))
        try:
            load_model(checkpoint)
            outcomes["loaded"] += 1
        except CheckpointError as err:
            assert (
                CONFIG_FILE in str(err)
                or WEIGHTS_FILE in str(err)
                or "checkpoint" in str(err)
            ), err
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100 and outcomes["loaded"] > 10, (
        outcomes
    )  # both kinds of mutation were drawn
