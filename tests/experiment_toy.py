"""A small experiment for the runner's tests: least squares by gradient descent, real work and deterministic.

Imported by name (``--module experiment_toy``) by the command line and by worker processes.
"""

import torch

from going_modular.experiments import Experiment


def least_squares(config: dict, *, device: torch.device) -> dict:
    """Fit w in y = X w + noise by ``steps`` of gradient descent; the error of the fit and the final loss."""
    generator = torch.Generator().manual_seed(config["seed"])
    x = torch.randn(512, 64, generator=generator, dtype=torch.float64)
    w = torch.randn(64, generator=generator, dtype=torch.float64)
    y = x @ w + 0.1 * torch.randn(512, generator=generator, dtype=torch.float64)
    w_hat = torch.zeros(64, dtype=torch.float64)
    for _ in range(config["steps"]):
        w_hat -= 0.1 * x.T @ (x @ w_hat - y) / len(y)
    return {
        "error": (w_hat - w).norm().item(),
        "loss": ((x @ w_hat - y) ** 2).mean().item(),
    }


GRID = tuple(
    {"steps": steps, "seed": seed} for steps in (10, 10000) for seed in range(4)
)
EXPERIMENTS = (
    Experiment("toy", least_squares, GRID, about="least squares by gradient descent"),
)
