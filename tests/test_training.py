"""Tests for going_modular.training: the resolved configuration, a prepared run, fit, its files, the digits checkpoint."""

import json
from dataclasses import asdict, replace

import pytest
import torch

import going_modular.training as training
from conftest import HISTORY_KEYS
from going_modular.checkpoint import load_model, save_model
from going_modular.data import load_digits_data
from going_modular.engine import TrainingHooks
from going_modular.plots import predict
from going_modular.training import (
    NATIVE_SIZES,
    TrainConfig,
    checkpoint_metadata,
    compiled,
    digits_checkpoint,
    fit,
    prepare,
    save_outputs,
)
from going_modular.variants import create_vit

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

SHORT = TrainConfig(epochs=2, warmup_steps=3, progress=False)


def test_the_defaults_are_the_training_chapters_digits_run():
    config = TrainConfig()
    assert (config.dataset, config.img_size, config.patch_size, config.model) == (
        "digits",
        8,
        2,
        "Micro",
    )
    assert (
        config.optimizer,
        config.lr,
        config.weight_decay,
        config.epochs,
        config.seed,
    ) == (
        "adamw",
        2e-3,
        0.05,
        20,
        0,
    )
    assert json.loads(json.dumps(asdict(config))) == asdict(config)


@pytest.mark.parametrize("dataset", [*NATIVE_SIZES, "my/folder"])
def test_fields_that_depend_on_another_are_resolved_when_built(dataset):
    sgd = TrainConfig(dataset=dataset, optimizer="sgd")
    assert (sgd.img_size, sgd.patch_size) == NATIVE_SIZES.get(dataset, (224, 16))
    assert (sgd.lr, sgd.weight_decay) == (0.01, 0.0)
    assert (
        replace(sgd, lr=0.1).lr == 0.1
        and replace(sgd, dataset="digits").img_size == sgd.img_size
    )  # resolved once
    assert (
        TrainConfig(pretrained="run/checkpoint").model is None
    )  # the checkpoint's architecture


def test_prepare_is_a_function_of_the_configuration():
    first, again = prepare(SHORT), prepare(SHORT)
    assert (
        len(first.data.train) == 1437
        and len(first.train_loader) == 22
        and first.model.config.embed_dim == 64
    )
    weights, again_weights = first.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(weights[name], again_weights[name]) for name in weights)
    other = prepare(replace(SHORT, seed=1))
    assert not torch.equal(first.model.head.weight, other.model.head.weight)
    init = first.model.blocks[0].msa.qkv.weight.std().item()
    own = (
        prepare(replace(SHORT, init="model"))
        .model.blocks[0]
        .msa.qkv.weight.std()
        .item()
    )
    assert (
        init == pytest.approx(0.02, rel=0.1) and own > 4 * init
    )  # N(0, 0.02^2) against the model's Xavier


def test_fit_trains_with_the_configurations_recipe_and_the_given_hooks():
    ends = []
    run = prepare(SHORT)
    history = fit(
        run,
        SHORT,
        TrainingHooks(epoch_end=lambda epoch, history, parts: ends.append(epoch)),
    )
    assert ends == [1, 2] and history["lr"][0] != history["lr"][1]
    again = prepare(SHORT)
    assert {k: v for k, v in fit(again, SHORT).items() if k != "seconds"} == {
        k: v for k, v in history.items() if k != "seconds"
    }


def test_compiled_hooks_compile_the_module_the_steps_call():
    model, wrapped = torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Linear(2, 2))
    module = compiled(TrainingHooks(wrap=lambda m: wrapped)).wrap(model)
    assert (
        isinstance(module, torch._dynamo.eval_frame.OptimizedModule)
        and module._orig_mod is wrapped
    )


def test_save_outputs_writes_the_checkpoint_of_the_tested_model(tmp_path):
    run = prepare(SHORT)
    history = fit(run, SHORT)
    metrics = save_outputs(run, history, asdict(SHORT), tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "checkpoint",
        "loss_curve.png",
        "metrics.json",
    ]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics
    model, metadata = load_model(tmp_path / "run" / "checkpoint")
    predicted, true = predict(model, run.test_loader)
    assert (predicted == true).sum().item() / len(true) == metrics["test_accuracy"]
    assert metadata["history"] == {
        k: v for k, v in history.items() if k != "seconds"
    } and metadata["training"] == asdict(SHORT)


def test_a_pretrained_model_with_other_channels_is_refused(tmp_path):
    model = create_vit("Micro/2", img_size=8, in_channels=3, num_classes=10)
    save_model(
        model,
        tmp_path / "rgb",
        {"class_names": [str(d) for d in range(10)], "preprocessing": {}},
    )
    with pytest.raises(ValueError, match="has 3 input channels, the data 1"):
        prepare(replace(SHORT, pretrained=str(tmp_path / "rgb")))


def test_digits_checkpoint_returns_a_valid_folder_without_training(
    tmp_path, monkeypatch
):
    model = create_vit("Micro/2", img_size=8, in_channels=1, num_classes=10)
    data = load_digits_data()
    folder = save_model(
        model,
        tmp_path / "vit-digits",
        {"class_names": data.class_names, "preprocessing": data.preprocessing},
    )
    monkeypatch.setattr(training, "fit", lambda *args: pytest.fail("must not train"))
    assert digits_checkpoint(folder) == folder


def test_digits_checkpoint_trains_when_the_folder_is_missing_invalid_or_of_an_older_spec(
    tmp_path, monkeypatch
):
    calls = []

    def quick_fit(run, config):
        calls.append((config, torch.get_num_threads()))
        return {key: [0.5] for key in HISTORY_KEYS}

    monkeypatch.setattr(training, "fit", quick_fit)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"")
    old_spec = dict(load_digits_data().preprocessing)
    old_spec["image_size"] = old_spec.pop(
        "img_size"
    )  # the spec's key before it was spelled as the model's
    model = create_vit("Micro/2", img_size=8, in_channels=1, num_classes=10)
    save_model(
        model,
        tmp_path / "old",
        checkpoint_metadata(load_digits_data(), {"lr": [0.1]})
        | {"preprocessing": old_spec},
    )
    torch.set_num_threads(2)
    for name in ("missing", "broken", "old"):
        folder = digits_checkpoint(tmp_path / name)
        model, metadata = load_model(folder)
        assert model.config.embed_dim == 64 and metadata["history"][
            "test_accuracy"
        ] == [0.5]
        assert "seconds" not in metadata["history"] and metadata["preprocessing"][
            "img_size"
        ] == [8, 8]
    assert (
        calls == [(TrainConfig(progress=False), 1)] * 3
    )  # the chapter's run, on one thread
    assert torch.get_num_threads() == 2
