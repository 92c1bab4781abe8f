"""Tests for the command line, going_modular.train: flags, their configuration, errors, and full runs."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_jax_npz
from going_modular.checkpoint import load_model
from going_modular.data import create_dataloaders, load_digits_data
from going_modular.plots import predict
from going_modular.train import build_parser, config_from_args, main
from going_modular.training import TrainConfig
from going_modular.variants import create_vit

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for action in build_parser()._actions:
        assert action.help, f"{action.option_strings} has no help"
        assert all(flag in text for flag in action.option_strings)


def test_help_states_each_default_once():
    text = " ".join(build_parser().format_help().split())  # undo the line wrapping
    assert "(default: None)" not in text and ") (default:" not in text
    assert (
        "(default: the --pretrained model's, else 8 for digits, 32 for textures and cifar10, 224 for folders)"
        in text
    )
    assert (
        "(default: 2e-3 for adamw, 0.01 for sgd)" in text
        and "(default: 0.05 for adamw, 0 for sgd)" in text
    )
    assert "(default: min(100, 10% of the training steps))" in text
    assert "(default: 64)" in text and "(default: digits)" in text
    assert "dropout rate (default: 0.0)" in text and "shuffling (default: 0)" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "--epochs"),
        (["--epochs", "two"], "expected int"),
        (["--lr", "-1"], "--lr"),
        (["--label-smoothing", "1"], "--label-smoothing"),
        (["--model", "XL"], "--model"),
        (["--amp", "fp8"], "--amp"),
        (["--no-such-flag"], "unrecognized arguments"),
        (["--image-size", "10", "--patch-size", "4"], "multiple of --patch-size"),
        (["--device", "tpu"], "--device"),
        (["--epochs", "1", "--warmup-steps", "1000"], "--warmup-steps"),
        (["--optimizer", "lamb"], "--optimizer"),
        (["--pretrained", "no/such/checkpoint"], "--pretrained: "),
        (
            ["--pretrained", "x.npz", "--model", "B"],
            "--pretrained fixes the architecture: drop ['--model']",
        ),
    ],
)
def test_bad_flags_exit_2_with_usage(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(argv + ["--output", str(tmp_path / "run")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: vit-train") and message in err
    assert not (tmp_path / "run").exists()


def config_of(*flags: str) -> TrainConfig:
    return config_from_args(
        build_parser().parse_args(list(flags)), device=torch.device("cpu")
    )


def test_the_default_flags_are_the_training_chapters_run():
    assert config_of() == TrainConfig() and config_of().model == "Micro"
    assert (
        config_of("--no-progress").progress is False
        and config_of("--compile").compile is True
    )


def test_the_flags_resolve_the_defaults_that_depend_on_other_flags():
    sgd = config_of("--optimizer", "sgd", "--dataset", "textures", "--model", "Ti")
    assert (sgd.lr, sgd.weight_decay, sgd.img_size, sgd.patch_size, sgd.model) == (
        0.01,
        0.0,
        32,
        4,
        "Ti",
    )
    given = config_of(
        "--optimizer",
        "sgd",
        "--lr",
        "0.1",
        "--weight-decay",
        "0.01",
        "--image-size",
        "16",
    )
    assert (given.lr, given.weight_decay, given.img_size, given.patch_size) == (
        0.1,
        0.01,
        16,
        2,
    )
    folder = config_of("--dataset", "some/folder", "--data-dir", "elsewhere")
    assert (folder.img_size, folder.patch_size, folder.data_dir) == (
        224,
        16,
        "elsewhere",
    )


def test_pretrained_sizes_come_from_its_configuration():
    pretrained = create_vit(
        "Micro/4", img_size=16, in_channels=1, num_classes=10
    ).config
    args = build_parser().parse_args(["--pretrained", "run/checkpoint"])
    config = config_from_args(args, device=torch.device("cpu"), pretrained=pretrained)
    assert (config.img_size, config.patch_size, config.model, config.pretrained) == (
        16,
        4,
        None,
        "run/checkpoint",
    )
    args = build_parser().parse_args(
        ["--pretrained", "run/checkpoint", "--image-size", "32"]
    )
    assert (
        config_from_args(
            args, device=torch.device("cpu"), pretrained=pretrained
        ).img_size
        == 32
    )


@pytest.mark.slow
def test_full_run_in_a_subprocess_writes_its_outputs(tmp_path):
    output = tmp_path / "run"
    env = os.environ | {"OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "going_modular.train",
            "--epochs",
            "2",
            "--warmup-steps",
            "5",
            "--batch-size",
            "128",
            "--patch-size",
            "4",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "1437 train / 360 test images" in run.stdout and "parameters" in run.stdout
    assert sorted(p.name for p in output.iterdir()) == [
        "checkpoint",
        "loss_curve.png",
        "metrics.json",
        "training_state.pt",
    ]
    assert (output / "loss_curve.png").read_bytes().startswith(b"\x89PNG")
    metrics = json.loads((output / "metrics.json").read_text())
    assert (
        len(metrics["history"]["test_accuracy"]) == 2
        and metrics["settings"]["dataset"] == "digits"
    )
    assert metrics["settings"]["warmup_steps"] == 5

    model, metadata = load_model(output / "checkpoint")
    assert metadata["class_names"] == [str(d) for d in range(10)]
    assert metadata["preprocessing"]["img_size"] == [8, 8]
    _, test_loader = create_dataloaders(load_digits_data(seed=0), batch_size=128)
    predictions, labels = predict(model, test_loader)
    accuracy = (predictions == labels).float().mean().item()
    assert accuracy == pytest.approx(
        metrics["test_accuracy"]
    )  # the checkpoint is the model that was tested


def image_folder(root: Path, broken: bool = False) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for value, name in ((30, "dark"), (220, "light")):
            (root / split / name).mkdir(parents=True)
            for i in range(4):
                pixels = np.clip(
                    value + rng.integers(-20, 20, (8, 8, 3)), 0, 255
                ).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    if broken:
        (root / "test" / "dark" / "0.png").write_bytes(b"garbage")
    return root


def folder_argv(data: Path, output: Path, *extra: str) -> list[str]:
    """vit-train's arguments for one epoch on the tiny 8x8 ImageFolder at ``data``."""
    return [
        "--dataset",
        str(data),
        "--image-size",
        "8",
        "--patch-size",
        "4",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--output",
        str(output),
        *extra,
    ]


def test_trains_on_an_image_folder(tmp_path, capsys):
    data = image_folder(tmp_path / "data")
    status = main(
        folder_argv(
            data,
            tmp_path / "run",
            "--warmup-steps",
            "0",
            "--num-workers",
            "0",
            "--no-progress",
        )
    )
    assert status == 0
    _, metadata = load_model(tmp_path / "run" / "checkpoint")
    assert (
        metadata["class_names"] == ["dark", "light"]
        and metadata["preprocessing"]["channels"] == 3
    )
    assert "2 classes" in capsys.readouterr().out


def test_unreadable_image_exits_1_naming_it(tmp_path, capsys):
    data = image_folder(tmp_path / "data", broken=True)
    status = main(folder_argv(data, tmp_path / "run"))
    assert status == 1
    assert "0.png" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_offline_download_exits_1_quickly(tmp_path, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    status = main(
        [
            "--dataset",
            f"http://127.0.0.1:{port}/food.zip",
            "--data-dir",
            str(tmp_path / "data"),
            "--timeout",
            "2",
            "--output",
            str(tmp_path / "run"),
        ]
    )
    assert status == 1
    assert "could not download" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_short_run_gets_a_short_default_warmup(tmp_path, capsys):
    # 1 epoch of 12 batches: the old fixed default of 100 warm-up steps would have been refused.
    status = main(
        [
            "--epochs",
            "1",
            "--batch-size",
            "128",
            "--patch-size",
            "4",
            "--no-progress",
            "--output",
            str(tmp_path / "run"),
        ]
    )
    assert status == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["settings"]["warmup_steps"] == 1  # min(100, 12 // 10)
    _, metadata = load_model(tmp_path / "run" / "checkpoint")
    assert metadata["history"]["test_accuracy"] == metrics["history"]["test_accuracy"]
    assert "seconds" not in metadata["history"] and metadata["training"]["epochs"] == 1


def test_pretrained_digits_at_8_pixels_fine_tune_at_16(tmp_path, capsys):
    assert (
        main(["--epochs", "8", "--no-progress", "--output", str(tmp_path / "pre")]) == 0
    )
    argv = [
        "--pretrained",
        str(tmp_path / "pre" / "checkpoint"),
        "--image-size",
        "16",
        "--optimizer",
        "sgd",
    ]
    status = main(
        argv + ["--epochs", "3", "--no-progress", "--output", str(tmp_path / "fine")]
    )
    assert status == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "fine" / "metrics.json").read_text())
    settings = metrics["settings"]
    assert (
        settings["img_size"],
        settings["patch_size"],
        settings["lr"],
        settings["weight_decay"],
    ) == (
        16,
        2,
        0.01,
        0,
    )
    assert settings["warmup_steps"] == (3 * 23) // 10  # the default: 10% of a short run
    assert metrics["test_accuracy"] >= 0.85
    model, _ = load_model(tmp_path / "fine" / "checkpoint")
    assert model.config.img_size == 16 and model.position_embedding.shape == (
        1,
        1 + 8 * 8,
        64,
    )


def test_pretrained_jax_npz_with_other_classes_gets_a_new_head(tmp_path, capsys):
    write_jax_npz(
        tmp_path / "tiny.npz",
        create_vit("Micro/2", img_size=8, in_channels=1, num_classes=7),
    )
    argv = [
        "--pretrained",
        str(tmp_path / "tiny.npz"),
        "--epochs",
        "1",
        "--no-progress",
        "--output",
        str(tmp_path / "run"),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    model, _ = load_model(tmp_path / "run" / "checkpoint")
    assert model.config.num_classes == 10 and model.config.gelu_approximate == "tanh"
    assert model.config.embed_dim == 64 and model.config.img_size == 8


def test_pretrained_with_other_channels_exits_1(tmp_path, capsys):
    write_jax_npz(
        tmp_path / "rgb.npz",
        create_vit("Micro/2", img_size=8, in_channels=3, num_classes=10),
    )
    argv = [
        "--pretrained",
        str(tmp_path / "rgb.npz"),
        "--epochs",
        "1",
        "--no-progress",
        "--output",
        str(tmp_path / "r"),
    ]
    assert main(argv) == 1
    assert (
        f"the pretrained model {tmp_path / 'rgb.npz'} has 3 input channels, the data 1"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "r").exists()


def test_textures_dataset_from_the_command_line(tmp_path, capsys):
    argv = [
        "--dataset",
        "textures",
        "--image-size",
        "16",
        "--epochs",
        "1",
        "--no-progress",
        "--output",
        str(tmp_path / "t"),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert (metrics["settings"]["img_size"], metrics["settings"]["patch_size"]) == (
        16,
        4,
    )
    _, metadata = load_model(tmp_path / "t" / "checkpoint")
    assert (
        len(metadata["class_names"]) == 4 and metadata["preprocessing"]["channels"] == 3
    )
