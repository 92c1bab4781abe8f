"""A few steps of digits training, on one process or (run by torchrun) as DistributedDataParallel replicas.

``python tests/ddp_replicas.py OUT`` under torchrun writes each rank's parameters to ``OUT/rank{r}.pt``;
tests/test_distributed.py imports ``train_a_few_steps`` to make the single-process reference.
"""

import sys
from pathlib import Path

import torch

from going_modular.ablations import subset
from going_modular.data import create_dataloaders, load_digits_data
from going_modular.distributed import (
    distributed_hooks,
    start_processes,
    stop_processes,
    world,
)
from going_modular.engine import init_truncated_normal, train
from going_modular.runtime import set_seed
from going_modular.variants import create_vit

GLOBAL_BATCH = 64


def train_a_few_steps() -> dict[str, torch.Tensor]:
    """Two epochs of 6 steps of 64 images (a fifth of the digits) with AdamW; the parameters by name.

    Under torchrun the hooks of ``distributed_hooks`` make the processes DDP replicas; on one process they do nothing.
    """
    torch.set_num_threads(1)
    set_seed(0)
    data = subset(
        load_digits_data(seed=0), 0.3, seed=0
    )  # 431 images: 6 full global batches
    train_loader, test_loader = create_dataloaders(
        data, batch_size=GLOBAL_BATCH, seed=0
    )
    model = init_truncated_normal(
        create_vit("Micro/2", img_size=8, in_channels=1, num_classes=10)
    )
    recipe = dict(epochs=2, lr=2e-3, weight_decay=0.05, warmup_steps=2, progress=False)
    train(model, train_loader, test_loader, hooks=distributed_hooks(), **recipe)
    return {
        name: tensor.detach().clone() for name, tensor in model.state_dict().items()
    }


if __name__ == "__main__":
    start_processes(torch.device("cpu"))
    try:
        parameters = train_a_few_steps()
        torch.save(
            parameters | {"world": torch.tensor(world())},
            Path(sys.argv[1]) / f"rank{world()[0]}.pt",
        )
    finally:
        stop_processes()
