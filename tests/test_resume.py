"""Tests for going_modular.resume and ``vit-train --resume``: the training state, its file, stopping and resuming.

The end-to-end tests kill or interrupt real ``vit-train`` processes and compare what the resumed run wrote with
an uninterrupted run, bit for bit (same machine, one thread).
"""

import copy
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import train_in_process
from going_modular.ablations import subset
from going_modular.checkpoint import read_checkpoint
from going_modular.data import create_dataloaders, load_digits_data
from going_modular.engine import (
    TrainingHooks,
    build_optimizer,
    build_scheduler,
    init_truncated_normal,
    train,
)
from going_modular.resume import (
    TRAINING_STATE_FILE,
    StopRequest,
    TrainingStateError,
    TrainingStopped,
    load_state_dicts,
    read_training_state,
    resumable,
    rng_state,
    save_training_state,
    set_rng_state,
    settings_differences,
    state_dicts,
)
from going_modular.runtime import set_seed
from going_modular.train import main
from going_modular.variants import create_vit

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("one_thread"),
]  # see conftest.py

FLAGS = ["--epochs", "4", "--threads", "1", "--no-progress"]
COMPARED = (
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "lr",
)  # the history but its timings


def test_rng_state_restores_every_generator():
    generator = torch.Generator().manual_seed(3)
    saved = rng_state(generator)

    def draw() -> tuple:
        return (
            random.random(),
            float(np.random.rand()),
            float(torch.rand(1)),
            float(torch.rand(1, generator=generator)),
        )

    first = draw()
    assert draw() != first  # the generators moved on
    set_rng_state(saved, generator)
    assert draw() == first


def digits_run(seed: int = 0) -> tuple:
    """A fresh digits ViT and its loaders (a third of the digits, for speed), as a new run builds them."""
    set_seed(seed)
    data = subset(load_digits_data(seed=seed), 0.3, seed=seed)
    train_loader, test_loader = create_dataloaders(data, batch_size=64, seed=seed)
    model = init_truncated_normal(
        create_vit("Micro/2", img_size=8, in_channels=1, num_classes=10)
    )
    return model, train_loader, test_loader


@pytest.mark.parametrize(
    "recipe",
    [dict(optimizer="adamw", lr=2e-3), dict(optimizer="sgd", lr=0.05, dropout=0.1)],
)
def test_train_resumed_from_any_epoch_equals_the_uninterrupted_run(recipe):
    recipe = dict(recipe)
    dropout = recipe.pop("dropout", 0.0)
    recipe |= dict(epochs=3, warmup_steps=4, progress=False)
    model, train_loader, test_loader = digits_run()
    model.apply(
        lambda m: setattr(m, "p", dropout) if isinstance(m, torch.nn.Dropout) else None
    )
    states = {}

    def keep(
        state: dict,
    ) -> None:  # as a file keeps it: with the generators of every process, by rank
        states[state["epoch"]] = copy.deepcopy(state) | {
            "rng": [rng_state(train_loader.generator)]
        }

    history = train(
        model, train_loader, test_loader, hooks=resumable(on_state=keep), **recipe
    )
    assert sorted(states) == [1, 2, 3]
    for epoch in (1, 2, 3):
        resumed_model, loader, test_loader = digits_run()
        resumed_model.apply(
            lambda m: (
                setattr(m, "p", dropout) if isinstance(m, torch.nn.Dropout) else None
            )
        )
        hooks = resumable(state=states[epoch], generator=loader.generator)
        resumed = train(resumed_model, loader, test_loader, hooks=hooks, **recipe)
        assert {key: resumed[key] for key in COMPARED} == {
            key: history[key] for key in COMPARED
        }
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, resumed_model.state_dict()[name]), (epoch, name)


def test_resumable_keeps_the_hooks_it_extends():
    calls = []
    inner = TrainingHooks(
        restore=lambda parts: calls.append("restore"),
        epoch_end=lambda epoch, history, parts: calls.append(epoch),
    )
    layer = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(layer)
    parts = dict(
        model=layer,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, total_steps=4),
        scaler=None,
    )
    saved = []
    hooks = resumable(inner, on_state=saved.append)
    assert hooks.restore(parts) is None and calls == [
        "restore"
    ]  # no state: the inner hooks decide
    hooks.epoch_end(1, {"lr": [0.1]}, parts)
    assert (
        calls == ["restore", 1]
        and saved[0]["epoch"] == 1
        and saved[0]["history"] == {"lr": [0.1]}
    )
    assert (
        saved[0]["optimizer"] == optimizer.state_dict() and saved[0]["scaler"] is None
    )


def test_load_state_dicts_refuses_a_state_without_a_part_the_run_has():
    layer = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(layer)
    scheduler = build_scheduler(optimizer, total_steps=4)
    state = state_dicts(
        epoch=1, history={"lr": [0.1]}, model=layer, optimizer=optimizer, scaler=None
    )
    with pytest.raises(TrainingStateError, match="has no scheduler state"):
        load_state_dicts(state, model=layer, optimizer=optimizer, scheduler=scheduler)
    assert load_state_dicts(state, model=layer, optimizer=optimizer, scaler=None) == {
        "lr": [0.1]
    }


def saved_state(tmp_path: Path) -> Path:
    layer = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(layer)
    state = state_dicts(
        epoch=2,
        history={"lr": [1.0, 0.5]},
        model=layer,
        optimizer=optimizer,
        scheduler=None,
    )
    return save_training_state(
        tmp_path / TRAINING_STATE_FILE, state | {"scaler": None}, settings={"lr": 1e-3}
    )


def test_training_state_round_trip(tmp_path):
    document = read_training_state(saved_state(tmp_path))
    assert (
        document["epoch"] == 2
        and document["history"] == {"lr": [1.0, 0.5]}
        and document["settings"] == {"lr": 1e-3}
    )
    assert len(document["rng"]) == 1 and torch.equal(
        document["rng"][0]["torch"], torch.get_rng_state()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        TRAINING_STATE_FILE
    ]  # no temporary file left


def test_a_failed_write_keeps_the_previous_state(tmp_path, monkeypatch):
    path = saved_state(tmp_path)
    before = path.read_bytes()

    def fail(obj, file) -> None:
        Path(file).write_bytes(b"half a state")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        save_training_state(path, {"epoch": 3}, settings={})
    assert path.read_bytes() == before and sorted(
        p.name for p in tmp_path.iterdir()
    ) == [TRAINING_STATE_FILE]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no training state at"),
        (b"not a zip archive", "is not a readable training state"),
        ("truncated", "is not a readable training state"),
        (
            {"weights": torch.zeros(2)},
            "is not a 'going_modular.training_state' file: its format is None",
        ),
        ([1, 2], "its format is 'list'"),
        (
            {"format": "going_modular.training_state", "version": 9},
            "has version 9; this reader knows 1",
        ),
        (
            {"format": "going_modular.training_state", "version": 1, "epoch": 1},
            "lacks the parts",
        ),
    ],
)
def test_read_training_state_refuses_what_is_not_one(tmp_path, content, message):
    path = tmp_path / "state.pt"
    if content == "truncated":
        path.write_bytes(saved_state(tmp_path).read_bytes()[:500])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(
        FileNotFoundError if content is None else TrainingStateError, match=message
    ):
        read_training_state(path)


def test_settings_differences_lists_every_difference_but_the_ignored():
    saved = {"lr": 0.002, "epochs": 20, "threads": 1, "seed": 0}
    current = {"lr": 0.001, "epochs": 20, "threads": 2, "dataset": "digits"}
    assert settings_differences(saved, current, ignore=("threads",)) == [
        "dataset: saved None, now 'digits'",
        "lr: saved 0.002, now 0.001",
        "seed: saved 0, now None",
    ]
    assert settings_differences(saved, saved) == []


def test_stop_request_turns_the_first_sigint_into_a_stop_between_steps():
    previous = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        loader = stop.between_steps([10, 11, 12])
        batches = iter(loader)
        assert next(batches) == 10 and len(loader) == 3
        os.kill(
            os.getpid(), signal.SIGINT
        )  # delivered to this (main) thread before kill returns
        assert stop.requested
        with pytest.raises(TrainingStopped, match="stopped before step 2 of 3") as info:
            next(batches)
        assert (info.value.step, info.value.steps) == (1, 3)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C interrupts at once
    assert signal.getsignal(signal.SIGINT) is previous


def test_stop_request_outside_the_main_thread_changes_no_handler():
    previous, errors = signal.getsignal(signal.SIGINT), []

    def use() -> None:
        try:
            with StopRequest() as stop:
                assert list(stop.between_steps([1, 2])) == [1, 2]
        except (
            Exception
        ) as err:  # reported below: an assertion in a thread would be lost
            errors.append(err)

    thread = threading.Thread(target=use)
    thread.start()
    thread.join()
    assert errors == [] and signal.getsignal(signal.SIGINT) is previous


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The reference: the run of FLAGS, trained in this process without interruption."""
    output = tmp_path_factory.mktemp("uninterrupted")
    train_in_process([*FLAGS, "--output", str(output)])
    return output


def assert_same_run(output: Path, reference: Path) -> None:
    """The two outputs hold the same history and, bit for bit, the same weights."""
    history, expected = (
        json.loads((p / "metrics.json").read_text())["history"]
        for p in (output, reference)
    )
    assert {key: history[key] for key in COMPARED} == {
        key: expected[key] for key in COMPARED
    }
    (_, weights), (_, expected_weights) = (
        read_checkpoint(output / "checkpoint"),
        read_checkpoint(reference / "checkpoint"),
    )
    assert weights.keys() == expected_weights.keys()
    assert all(
        np.array_equal(weights[name], expected_weights[name]) for name in weights
    )


def vit_train(*flags: str, **popen: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "going_modular.train", *flags], text=True, **popen
    )


def wait_for_epoch(
    state_file: Path, epoch: int, process: subprocess.Popen, timeout: float = 120
) -> None:
    """Wait until ``state_file`` holds epoch ``epoch`` or later; fail if the process ends first.

    The file is read while the process may be replacing it: atomic writes mean it is always whole."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if state_file.exists() and read_training_state(state_file)["epoch"] >= epoch:
            return
        time.sleep(0.02)
    raise AssertionError(
        f"{state_file} did not reach epoch {epoch} (exit status {process.poll()})"
    )


def test_runs_killed_at_random_moments_resume_to_the_uninterrupted_run(
    tmp_path, uninterrupted, capsys
):
    output = tmp_path / "killed"
    state_file = output / TRAINING_STATE_FILE
    rng = random.Random(0)
    kills = []
    for epoch in (
        1,
        2,
    ):  # kill twice, each time at a random moment after the state of `epoch` appeared
        process = vit_train(
            *FLAGS,
            "--output",
            str(output),
            *(["--resume"] if kills else []),
            stdout=subprocess.DEVNULL,
        )
        wait_for_epoch(state_file, epoch, process)
        time.sleep(
            rng.uniform(0, 0.5)
        )  # an epoch takes 0.4-0.9 s: anywhere in training or in a write
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
        kills.append(read_training_state(state_file)["epoch"])
    assert kills[0] >= 1 and kills[1] >= 2 and not (output / "metrics.json").exists()
    assert (
        main([*FLAGS, "--output", str(output), "--resume"]) == 0
    )  # the last part in this process
    assert f"resuming after epoch {kills[1]}" in capsys.readouterr().out
    assert_same_run(output, uninterrupted)


def test_ctrl_c_stops_between_steps_and_prints_the_command_that_resumes(
    tmp_path, uninterrupted
):
    output = tmp_path / "stopped"
    process = vit_train(
        *FLAGS, "--output", str(output), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_for_epoch(output / TRAINING_STATE_FILE, 1, process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert (
        "Traceback" not in err and "stopped in epoch" in err and "To continue:" in err
    )
    command = shlex.split(err.strip().splitlines()[-1])
    assert command == ["vit-train", *FLAGS, "--output", str(output), "--resume"]
    assert main(command[1:]) == 0
    assert_same_run(output, uninterrupted)


def test_resume_refuses_other_settings_listing_them_all(uninterrupted, capsys):
    with pytest.raises(SystemExit) as info:
        main(
            [
                *FLAGS,
                "--output",
                str(uninterrupted),
                "--resume",
                "--lr",
                "1e-3",
                "--seed",
                "1",
            ]
        )
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert (
        "was saved with other settings:" in err
        and "lr: saved 0.002, now 0.001" in err
        and "seed: saved 0, now 1" in err
    )


def test_resume_lets_the_execution_settings_differ(uninterrupted, tmp_path, capsys):
    moved = (
        tmp_path / "moved"
    )  # a run folder copied elsewhere, resumed with progress bars and two threads
    moved.mkdir()
    (moved / TRAINING_STATE_FILE).write_bytes(
        (uninterrupted / TRAINING_STATE_FILE).read_bytes()
    )
    flags = [flag for flag in FLAGS if flag != "--no-progress"]
    assert (
        main([*flags[:-1], "2", "--output", str(moved), "--resume"]) == 0
    )  # --threads 2
    assert "resuming after epoch 4" in capsys.readouterr().out
    assert_same_run(
        moved, uninterrupted
    )  # nothing was left to train: the saved weights are written out


def test_resume_without_a_state_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main([*FLAGS, "--output", str(tmp_path / "empty"), "--resume"])
    assert (
        info.value.code == 2
        and "--resume: no training state at" in capsys.readouterr().err
    )
