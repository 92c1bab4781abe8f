"""Test-session settings that must hold before anything imports timm or starts a kernel."""
import os

import pytest
import torch

# timm looks for pretrained weights on the Hugging Face Hub unless told to stay offline; the
# kernels that nbval starts inherit this environment, so the chapters stay offline too.
os.environ["HF_HUB_OFFLINE"] = "1"

# MPLBACKEND is deliberately left unset: without a display, matplotlib already picks Agg in this
# process, while an MPLBACKEND here would reach the kernels too and replace their inline backend,
# so the figures nbval compares would silently disappear from the chapters' outputs.


@pytest.fixture
def one_thread():
    """Tiny models run fastest, and reproducibly, on one thread; restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
