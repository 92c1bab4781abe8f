"""Test-session settings that must hold before anything imports timm or starts a kernel."""
import os

# timm looks for pretrained weights on the Hugging Face Hub unless told to stay offline; the
# kernels that nbval starts inherit this environment, so the chapters stay offline too.
os.environ["HF_HUB_OFFLINE"] = "1"

# MPLBACKEND is deliberately left unset: without a display, matplotlib already picks Agg in this
# process, while an MPLBACKEND here would reach the kernels too and replace their inline backend,
# so the figures nbval compares would silently disappear from the chapters' outputs.
