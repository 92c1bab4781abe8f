"""Tests for going_modular.engine: optimiser, schedule, one epoch, evaluation, the training loop and its hooks."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import DIGITS_VIT, HISTORY_KEYS
from going_modular.data import create_dataloaders, load_digits_data
from going_modular.engine import (
    NonFiniteLossError,
    TrainingHooks,
    build_optimizer,
    build_scheduler,
    default_warmup_steps,
    evaluate,
    init_truncated_normal,
    train,
    train_one_epoch,
)
from going_modular.runtime import set_seed
from going_modular.vit import ViT

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


ONE_BLOCK = replace(
    DIGITS_VIT, depth=1
)  # the digits ViT with one block: the quickest to train


class Lookup(nn.Module):
    """Logits = 10 * one-hot of the class written in x[:, 0]; NaN logits where x[:, 1] is set."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = 10 * F.one_hot(x[:, 0].long(), 3).float() * self.weight
        return torch.where(x[:, 1:2] > 0, torch.full_like(logits, math.nan), logits)


def lookup_loader(
    predicted: list[int], labels: list[int], batch_size: int, nan_at: int | None = None
) -> DataLoader:
    x = torch.zeros(len(labels), 2)
    x[:, 0] = torch.tensor(predicted, dtype=torch.float)
    if nan_at is not None:
        x[nan_at, 1] = 1
    return DataLoader(TensorDataset(x, torch.tensor(labels)), batch_size=batch_size)


def test_optimizer_groups_and_betas():
    model = ViT(ONE_BLOCK)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    decayed = {id(p) for p in optimizer.param_groups[0]["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in decayed}
    assert (
        "blocks.0.msa.qkv.weight" in names
        and "head.weight" in names
        and "patch_embedding.proj.weight" in names
    )
    assert not names & {
        "class_token",
        "position_embedding",
        "blocks.0.ln_1.weight",
        "blocks.0.msa.qkv.bias",
    }
    assert optimizer.param_groups[1]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(
        list(model.parameters())
    )
    assert optimizer.defaults["betas"] == (0.9, 0.999)
    with pytest.raises(ValueError, match="lr"):
        build_optimizer(model, lr=0)
    with pytest.raises(ValueError, match="weight_decay"):
        build_optimizer(model, weight_decay=-1)


class Declares(nn.Module):
    """A model that names its own parameters without weight decay, as timm's models do."""

    def __init__(self, names: set[str]) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.zeros(4, 3))
        self.proj = nn.Linear(3, 3)
        self.names = names

    def no_weight_decay(self) -> set[str]:
        return self.names


def test_optimizer_asks_the_model_which_parameters_to_exempt():
    decayed, exempt = build_optimizer(Declares({"table"})).param_groups
    assert [p.shape for p in decayed["params"]] == [(3, 3)]  # proj.weight only
    assert sorted(tuple(p.shape) for p in exempt["params"]) == [
        (3,),
        (4, 3),
    ]  # proj.bias (1-D) and table
    decayed, _ = build_optimizer(Declares(set())).param_groups
    assert (
        len(decayed["params"]) == 2
    )  # nothing named: table is decayed like any matrix
    plain = nn.Sequential(nn.Linear(3, 3))  # no no_weight_decay(): only the 1-D rule
    assert [p.ndim for p in build_optimizer(plain).param_groups[1]["params"]] == [1]
    decayed, _ = build_optimizer(
        Declares({"table", "dist_token"})
    ).param_groups  # timm names absent tokens too
    assert [p.shape for p in decayed["params"]] == [(3, 3)]


def test_default_warmup_is_a_tenth_capped_at_100():
    assert [default_warmup_steps(n) for n in (5, 69, 460, 1000, 10**6)] == [
        0,
        6,
        46,
        100,
        100,
    ]


def learning_rates(total: int, warmup: int, decay: str, lr: float = 1.0) -> list[float]:
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=lr)
    scheduler = build_scheduler(
        optimizer, total_steps=total, warmup_steps=warmup, decay=decay
    )
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_schedule_warms_up_linearly_then_decays(decay):
    rates = learning_rates(total=50, warmup=10, decay=decay)
    warm = rates[:11]
    assert warm[0] == pytest.approx(0.1) and warm[10] == pytest.approx(1.0)
    steps = [b - a for a, b in zip(warm, warm[1:], strict=False)]
    assert max(steps) - min(steps) < 1e-9  # a straight line
    assert all(
        a > b for a, b in zip(rates[10:], rates[11:], strict=False)
    )  # strictly decreasing after the peak
    assert rates[-1] < 0.05


def test_linear_and_cosine_decays_differ_at_the_middle():
    cosine, linear = learning_rates(40, 0, "cosine"), learning_rates(40, 0, "linear")
    assert cosine[0] == linear[0] == 1.0
    assert linear[20] == pytest.approx(0.5)
    assert cosine[10] > linear[10]  # cosine stays high longer


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(total_steps=0), "total_steps"),
        (dict(total_steps=10, warmup_steps=10), "warmup_steps"),
        (dict(total_steps=10, decay="step"), "decay"),
    ],
)
def test_schedule_rejects_bad_arguments(kwargs, message):
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    with pytest.raises(ValueError, match=message):
        build_scheduler(optimizer, **kwargs)


def test_metrics_are_weighted_by_samples_not_batches():
    # batch 1: 1 of 4 right; batch 2: 1 of 1 right. Per sample 2/5; the mean of batches would be 5/8.
    loader = lookup_loader(
        predicted=[0, 1, 1, 1, 2], labels=[0, 0, 0, 0, 2], batch_size=4
    )
    model = Lookup()
    loss_fn = nn.CrossEntropyLoss()
    x, y = loader.dataset.tensors
    expected_loss = F.cross_entropy(model(x), y).item()
    tested = evaluate(model, loader, loss_fn, device=torch.device("cpu"))
    assert tested["accuracy"] == pytest.approx(2 / 5)
    assert tested["loss"] == pytest.approx(expected_loss)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    trained = train_one_epoch(
        model, loader, loss_fn, optimizer, device=torch.device("cpu")
    )
    assert trained["accuracy"] == pytest.approx(2 / 5)
    assert trained["loss"] == pytest.approx(expected_loss)


def test_non_finite_loss_names_epoch_and_step():
    loader = lookup_loader(predicted=[0] * 6, labels=[0] * 6, batch_size=2, nan_at=3)
    model = Lookup()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLossError, match="epoch 7, step 2"):
        train_one_epoch(
            model,
            loader,
            nn.CrossEntropyLoss(),
            optimizer,
            device=torch.device("cpu"),
            epoch=7,
        )


def test_gradient_clipping_bounds_the_update():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    before = [p.detach().clone() for p in model.parameters()]
    loader = DataLoader(
        TensorDataset(100 * torch.randn(8, 1, 2, 2), torch.randint(0, 3, (8,))),
        batch_size=8,
    )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=1.0
    )  # the update equals the clipped gradient
    train_one_epoch(
        model,
        loader,
        nn.CrossEntropyLoss(),
        optimizer,
        device=torch.device("cpu"),
        clip_norm=1e-3,
    )
    update = torch.cat(
        [
            (p.detach() - b).flatten()
            for p, b in zip(model.parameters(), before, strict=True)
        ]
    )
    assert update.norm().item() == pytest.approx(
        1e-3, rel=1e-3
    )  # the raw gradient norm is far above 1e-3


def test_a_loss_scaler_changes_no_update_unless_a_gradient_overflows():
    """fp16's GradScaler path (here the CPU's scaler, in float32): a power-of-two scale is undone exactly before
    clipping; a scale so large that a gradient overflows skips that step and lowers the scale."""

    def one_epoch(
        scaler: torch.amp.GradScaler | None, batch_size: int = 4, gain: float = 1.0
    ) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        x, y = gain * torch.randn(8, 1, 2, 2), torch.randint(0, 3, (8,))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
        train_one_epoch(
            model,
            loader,
            nn.CrossEntropyLoss(),
            optimizer,
            device=torch.device("cpu"),
            scaler=scaler,
        )
        return [p.detach() for p in model.parameters()]

    plain = one_epoch(None)
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            plain,
            one_epoch(torch.amp.GradScaler("cpu", init_scale=2.0**10)),
            strict=True,
        )
    )
    overflowing = torch.amp.GradScaler("cpu", init_scale=2.0**127)
    torch.manual_seed(0)
    start = [
        p.detach().clone()
        for p in nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).parameters()
    ]
    skipped = one_epoch(
        overflowing, batch_size=8, gain=1e6
    )  # one step, whose scaled gradients overflow
    assert (
        all(torch.equal(a, b) for a, b in zip(start, skipped, strict=True))
        and overflowing.get_scale() < 2.0**127
    )


def test_empty_loader_is_an_error():
    empty = DataLoader(
        TensorDataset(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)), batch_size=2
    )
    with pytest.raises(ValueError, match="no batches"):
        evaluate(Lookup(), empty, nn.CrossEntropyLoss(), device=torch.device("cpu"))


@pytest.fixture(scope="module")
def digits_loaders():
    return create_dataloaders(load_digits_data(seed=0), batch_size=128, seed=0)


def test_train_learns_and_returns_history(digits_loaders, capsys):
    set_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 10)
    )  # logistic regression on the pixels
    history = train(
        model, *digits_loaders, epochs=3, lr=0.05, weight_decay=0.0, progress=True
    )  # default warm-up
    assert set(history) == set(HISTORY_KEYS)
    assert all(len(values) == 3 for values in history.values())
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history["test_accuracy"][-1] > 0.8  # chance is 0.1
    assert history["lr"][-1] < history["lr"][0]
    assert "epoch 3/3" in capsys.readouterr().out


def test_training_is_deterministic_under_a_seed(digits_loaders):
    def run() -> dict[str, list[float]]:
        set_seed(0)
        train_loader, test_loader = create_dataloaders(
            load_digits_data(seed=0), batch_size=128, seed=0
        )
        history = train(
            ViT(ONE_BLOCK),
            train_loader,
            test_loader,
            epochs=2,
            lr=3e-3,
            warmup_steps=3,
            progress=False,
        )
        del history["seconds"]
        return history

    first = run()
    assert first == run()
    assert first["train_loss"][0] != first["train_loss"][1]


def test_bf16_autocast_runs_on_cpu(digits_loaders):
    set_seed(0)
    history = train(
        ViT(ONE_BLOCK), *digits_loaders, epochs=1, amp="bf16", progress=False
    )
    assert math.isfinite(history["train_loss"][0]) and history["test_accuracy"][0] > 0


class Untouchable:
    """A loader that fails the test if training ever starts iterating it."""

    def __len__(self) -> int:
        return 4

    def __iter__(self):
        raise AssertionError("training started before the arguments were checked")


def own_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(epochs=0), ValueError, "epochs"),
        (dict(amp="fp8"), ValueError, "amp"),
        (dict(amp="fp16"), ValueError, "CUDA"),
        (dict(label_smoothing=1.0), ValueError, "label_smoothing"),
        (dict(clip_norm=0.0), ValueError, "clip_norm"),
        (dict(warmup_steps=4), ValueError, "warmup_steps"),
        (
            dict(optimizer="lamb"),
            ValueError,
            "optimizer must be 'adamw' or 'sgd', got 'lamb'",
        ),
        (
            dict(optimizer=42),
            TypeError,
            "optimizer must be 'adamw', 'sgd' or a torch.optim.Optimizer, got int",
        ),
        (
            dict(optimizer=own_optimizer, lr=0.5),
            ValueError,
            r"\['lr'\] set up a named optimizer: give them to your SGD",
        ),
        (
            dict(scheduler="step"),
            TypeError,
            "scheduler must be 'cosine', 'linear' or a torch LRScheduler, got 'step'",
        ),
        (dict(scheduler=0.5), TypeError, "got 0.5"),
        (dict(scheduler=lambda opt: None), TypeError, "scheduler must be"),
    ],
)
def test_bad_arguments_fail_before_training(kwargs, error, message):
    if kwargs.get("amp") == "fp16" and torch.cuda.is_available():
        pytest.skip("fp16 is allowed when CUDA is available")
    model, kwargs = ViT(ONE_BLOCK), dict(kwargs)
    if callable(kwargs.get("optimizer")):
        kwargs["optimizer"] = kwargs["optimizer"](model)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(error, match=message):
        train(
            model,
            Untouchable(),
            Untouchable(),
            progress=False,
            **(dict(epochs=1) | kwargs),
        )
    assert all(
        torch.equal(before[name], tensor) for name, tensor in model.state_dict().items()
    )


def test_a_scheduler_of_your_own_must_schedule_the_optimizer_used_and_set_its_own_warmup():
    model = ViT(ONE_BLOCK)
    mine = own_optimizer(model)
    other = torch.optim.lr_scheduler.StepLR(own_optimizer(ViT(ONE_BLOCK)), step_size=1)
    for kwargs in (dict(scheduler=other), dict(optimizer=mine, scheduler=other)):
        with pytest.raises(
            ValueError,
            match="a scheduler of your own must schedule the optimizer given",
        ):
            train(
                model, Untouchable(), Untouchable(), epochs=1, progress=False, **kwargs
            )
    ok = torch.optim.lr_scheduler.StepLR(mine, step_size=1)
    with pytest.raises(ValueError, match="warmup_steps must be None"):
        train(
            model,
            Untouchable(),
            Untouchable(),
            epochs=1,
            optimizer=mine,
            scheduler=ok,
            warmup_steps=2,
        )


def test_an_optimizer_and_scheduler_of_your_own_train_as_the_named_ones(digits_loaders):
    """The objects the names build, given as objects, give the same run to the last bit."""
    recipe = dict(lr=3e-3, weight_decay=0.05)

    def run(objects: bool) -> tuple[dict, dict]:
        set_seed(0)
        model = ViT(ONE_BLOCK)
        if not objects:
            history = train(
                model,
                *digits_loaders,
                epochs=2,
                warmup_steps=3,
                progress=False,
                **recipe,
            )
        else:
            optimizer = build_optimizer(model, **recipe)
            scheduler = build_scheduler(
                optimizer, total_steps=2 * len(digits_loaders[0]), warmup_steps=3
            )
            history = train(
                model,
                *digits_loaders,
                epochs=2,
                optimizer=optimizer,
                scheduler=scheduler,
                progress=False,
            )
        del history["seconds"]
        return history, model.state_dict()

    (named, named_weights), (own, own_weights) = run(objects=False), run(objects=True)
    assert own == named and named["lr"][0] != named["lr"][1]
    assert all(
        torch.equal(named_weights[name], own_weights[name]) for name in named_weights
    )


class Counting(nn.Module):
    """Wraps a model and counts the batches it sees (a stand-in for DistributedDataParallel)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.batches = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches += 1
        return self.model(x)


def test_hooks_wrap_the_steps_reduce_every_pass_and_see_every_epoch(
    digits_loaders, capsys
):
    wrapped, reduced, ends = [], [], []

    def wrap(model: nn.Module) -> nn.Module:
        wrapped.append(Counting(model))
        return wrapped[-1]

    def reduce(*sums: float) -> list[float]:
        reduced.append(sums)
        return list(sums)

    hooks = TrainingHooks(
        wrap=wrap,
        reduce=reduce,
        epoch_end=lambda epoch, history, parts: ends.append((epoch, dict(parts))),
        prints=False,
    )
    set_seed(0)
    model = ViT(ONE_BLOCK)
    history = train(model, *digits_loaders, epochs=2, hooks=hooks, progress=True)
    assert len(wrapped) == 1 and wrapped[0].model is model
    assert wrapped[0].batches == 2 * len(
        digits_loaders[0]
    )  # the training steps, not the evaluation
    assert [seen for _, _, seen in reduced] == [
        len(digits_loaders[0]) * 128,
        360,
    ] * 2  # train, test; per epoch
    assert [epoch for epoch, _ in ends] == [1, 2] and set(ends[0][1]) == {
        "model",
        "optimizer",
        "scheduler",
        "scaler",
    }
    assert ends[0][1]["model"] is model and len(history["lr"]) == 2
    assert capsys.readouterr().out == ""  # prints=False: this process does not report


def test_a_restored_history_continues_with_the_next_epoch(digits_loaders):
    restored = {key: [0.5] for key in HISTORY_KEYS}
    calls, ends = [], []

    def restore(parts: dict) -> dict:
        calls.append(sorted(parts))
        return {key: list(values) for key, values in restored.items()}

    hooks = TrainingHooks(
        restore=restore, epoch_end=lambda epoch, history, parts: ends.append(epoch)
    )
    history = train(
        ViT(ONE_BLOCK), *digits_loaders, epochs=3, hooks=hooks, progress=False
    )
    assert calls == [["model", "optimizer", "scaler", "scheduler"]] and ends == [2, 3]
    assert history["lr"][0] == 0.5 and len(history["lr"]) == 3
    too_long = TrainingHooks(
        restore=lambda parts: {key: values * 4 for key, values in restored.items()}
    )
    with pytest.raises(
        ValueError, match="the restored run has trained 4 epochs, more than epochs=3"
    ):
        train(ViT(ONE_BLOCK), *digits_loaders, epochs=3, hooks=too_long, progress=False)


def test_truncated_normal_init_redraws_weights_and_zeroes_biases():
    torch.manual_seed(0)
    model = ViT(
        img_size=8,
        patch_size=2,
        in_channels=1,
        num_classes=10,
        embed_dim=64,
        depth=2,
        num_heads=4,
    )
    before = model.position_embedding.detach().clone()
    assert init_truncated_normal(model, std=0.02) is model
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            assert module.weight.std().item() == pytest.approx(0.02, rel=0.25)
            assert module.bias is None or not module.bias.any()
    assert torch.equal(
        model.position_embedding, before
    )  # only Linear and Conv2d layers are redrawn
    with pytest.raises(ValueError, match="std"):
        init_truncated_normal(model, std=0)
