"""The lowest Python and torch versions that pyproject.toml declares are versions the code can run on.

* Python: every module of the package, the tools and the tests parses with the grammar of the
  declared minimum Python (``ast.parse(..., feature_version=...)``). CI runs that Python.
* torch and torchvision: every ``torch.*`` / ``torchvision.*`` name that ``going_modular`` uses
  (found by reading its source: ``import torch.nn.functional as F``, ``from torch import nn`` and
  ``from torch.x import y`` are resolved) must be either in ``ADDED`` with the release that
  introduced it, no newer than the declared floor, or in ``SINCE_1X``, the names that every
  torch 1.x / torchvision release already had. A name in neither fails, so a new API cannot
  slip in without someone looking up when it appeared. Tensor methods (``x.unflatten(...)``) and
  names reached through ``getattr`` are out of reach of this check.
* ``KEYWORDS_ADDED`` lists keyword arguments that arrived after their function (checked when
  used); it is not exhaustive.

Versions come from the PyTorch release notes and the "added in" notes of the documentation.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SOURCES = sorted(
    path
    for folder in ("going_modular", "tools", "tests", "benchmarks", "book/_ext")
    for path in (ROOT / folder).rglob("*.py")
)
PACKAGE_MODULES = sorted((ROOT / "going_modular").glob("*.py"))
ROOTS = ("torch", "torchvision")

# name -> the first release that has it (torch versions for torch.*, torchvision versions for torchvision.*)
ADDED = {
    "torch.amp.GradScaler": "2.3",  # torch.amp.GradScaler("cuda"); before 2.3 only torch.cuda.amp.GradScaler
    "torch.get_default_device": "2.3",
    "torch.nn.attention.sdpa_kernel": "2.3",
    "torch.nn.RMSNorm": "2.4",
    "torch.utils.flop_counter.FlopCounterMode": "2.1",
    "torch.backends.cpu.get_cpu_capability": "2.1",  # pytorch/pytorch#100164
    "torch.nn.functional.scaled_dot_product_attention": "2.0",
    "torch.compile": "2.0",
    "torch.set_default_device": "2.0",
    "torch.func.functional_call": "2.0",
    "torch.optim.lr_scheduler.LRScheduler": "2.0",  # the public name of the former _LRScheduler
    "torch.backends.mps.is_available": "1.12",
    "torch.autocast": "1.10",
    "torch.isin": "1.10",
    "torch.optim.lr_scheduler.LinearLR": "1.10",
    "torch.optim.lr_scheduler.SequentialLR": "1.10",
    "torch.inference_mode": "1.9",
    "torch.use_deterministic_algorithms": "1.8",
    "torch.distributed.all_gather_object": "1.8",
    "torch.nn.init.trunc_normal_": "1.7",
    # torchvision: transforms v2 was a beta in 0.15 and is stable since 0.16
    "torchvision.transforms.v2": "0.16",
    "torchvision.transforms.v2.Compose": "0.16",
    "torchvision.transforms.v2.RandomCrop": "0.16",
    "torchvision.transforms.v2.RandomHorizontalFlip": "0.16",
    "torchvision.transforms.v2.Resize": "0.16",
    "torchvision.transforms.v2.CenterCrop": "0.16",
    "torchvision.transforms.v2.Normalize": "0.16",
    "torchvision.transforms.v2.ToImage": "0.16",
    "torchvision.transforms.v2.ToDtype": "0.16",
    "torchvision.transforms.v2.InterpolationMode": "0.16",
    "torchvision.models.get_model_weights": "0.14",  # the multi-weight API
}
# (function, keyword) -> the first torch release that accepts the keyword
KEYWORDS_ADDED = {
    ("torch.nn.GELU", "approximate"): "1.12",
    ("torch.nn.functional.gelu", "approximate"): "1.12",
    ("torch.nn.functional.interpolate", "antialias"): "1.11",
    ("torch.load", "weights_only"): "1.13",
    ("torch.nn.LayerNorm", "bias"): "2.1",
}
# Names every torch 1.x (and every torchvision of that era) already had.
SINCE_1X = {
    "torch",
    "torch.Generator",
    "torch.Tensor",
    "torch.__version__",
    "torch.arange",
    "torch.argmax",
    "torch.as_tensor",
    "torch.bfloat16",
    "torch.bincount",
    "torch.bool",
    "torch.cat",
    "torch.cuda.device_count",
    "torch.cuda.get_device_name",
    "torch.cuda.get_rng_state_all",
    "torch.cuda.is_available",
    "torch.cuda.manual_seed_all",
    "torch.cuda.set_device",
    "torch.cuda.set_rng_state",
    "torch.device",
    "torch.distributed",
    "torch.distributed.all_reduce",
    "torch.distributed.barrier",
    "torch.distributed.destroy_process_group",
    "torch.distributed.get_backend",
    "torch.distributed.get_rank",
    "torch.distributed.get_world_size",
    "torch.distributed.init_process_group",
    "torch.distributed.is_available",
    "torch.distributed.is_initialized",
    "torch.empty",
    "torch.empty_like",
    "torch.enable_grad",
    "torch.eye",
    "torch.float16",
    "torch.float32",
    "torch.float64",
    "torch.from_numpy",
    "torch.full",
    "torch.get_num_threads",
    "torch.get_rng_state",
    "torch.hub",
    "torch.hub.HASH_REGEX.search",
    "torch.hub.download_url_to_file",
    "torch.hub.get_dir",
    "torch.initial_seed",
    "torch.int64",
    "torch.is_tensor",
    "torch.linalg.solve",
    "torch.load",
    "torch.long",
    "torch.manual_seed",
    "torch.nn",
    "torch.nn.AdaptiveAvgPool2d",
    "torch.nn.BatchNorm2d",
    "torch.nn.Conv2d",
    "torch.nn.CrossEntropyLoss",
    "torch.nn.Dropout",
    "torch.nn.Flatten",
    "torch.nn.GELU",
    "torch.nn.Identity",
    "torch.nn.LayerNorm",
    "torch.nn.Linear",
    "torch.nn.MaxPool2d",
    "torch.nn.Module",
    "torch.nn.ModuleList",
    "torch.nn.Parameter",
    "torch.nn.ReLU",
    "torch.nn.Sequential",
    "torch.nn.Tanh",
    "torch.nn.functional",
    "torch.nn.functional.cross_entropy",
    "torch.nn.functional.dropout",
    "torch.nn.functional.gelu",
    "torch.nn.functional.interpolate",
    "torch.nn.functional.layer_norm",
    "torch.nn.functional.linear",
    "torch.nn.functional.one_hot",
    "torch.nn.functional.pad",
    "torch.nn.functional.softmax",
    "torch.nn.functional.unfold",
    "torch.nn.init",
    "torch.nn.init.normal_",
    "torch.nn.init.uniform_",
    "torch.nn.init.xavier_uniform_",
    "torch.nn.init.zeros_",
    "torch.nn.parallel.DistributedDataParallel",
    "torch.nn.utils.clip_grad_norm_",
    "torch.no_grad",
    "torch.nonzero",
    "torch.ones",
    "torch.ones_like",
    "torch.optim.AdamW",
    "torch.optim.Optimizer",
    "torch.optim.SGD",
    "torch.optim.lr_scheduler.CosineAnnealingLR",
    "torch.randn",
    "torch.randperm",
    "torch.save",
    "torch.set_num_threads",
    "torch.set_rng_state",
    "torch.stack",
    "torch.tensor",
    "torch.uint8",
    "torch.utils.data",
    "torch.utils.data.DataLoader",
    "torch.utils.data.Dataset",
    "torch.utils.data.DistributedSampler",
    "torch.utils.data.Subset",
    "torch.utils.data.TensorDataset",
    "torch.utils.data.random_split",
    "torch.where",
    "torch.zeros",
    "torch.zeros_like",
    "torchvision",
    "torchvision.datasets",
    "torchvision.datasets.CIFAR10",
    "torchvision.datasets.CIFAR10.base_folder",
    "torchvision.datasets.CIFAR10.url",
    "torchvision.datasets.ImageFolder",
    "torchvision.datasets.VisionDataset",
}


def declared_python() -> tuple[int, int]:
    spec = PYPROJECT["project"]["requires-python"]
    match = re.fullmatch(r">=\s*3\.(\d+)", spec)
    assert match, f"requires-python should be a plain lower bound '>=3.N', got {spec!r}"
    return 3, int(match[1])


def declared_floor(name: str) -> Version:
    [requirement] = [
        r
        for r in map(Requirement, PYPROJECT["project"]["dependencies"])
        if r.name == name
    ]
    [spec] = [s for s in requirement.specifier if s.operator == ">="]
    return Version(spec.version)


def names_used(tree: ast.Module) -> tuple[set[str], set[tuple[str, str]]]:
    """Dotted ``torch``/``torchvision`` names used in a module, and (function, keyword) pairs of calls."""
    alias: dict[str, str] = {}
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for item in node.names:
                if item.name.split(".")[0] in ROOTS:
                    used.add(item.name)
                    if (
                        item.asname
                    ):  # import torch.nn.functional as F: F is torch.nn.functional
                        alias[item.asname] = item.name
                    else:  # import torch.nn: binds torch
                        alias[item.name.split(".")[0]] = item.name.split(".")[0]
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").split(".")[0] in ROOTS
        ):
            for item in node.names:
                used.add(f"{node.module}.{item.name}")
                alias[item.asname or item.name] = f"{node.module}.{item.name}"

    def resolve(node: ast.expr) -> str | None:
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id in alias:
            return ".".join([alias[node.id], *reversed(parts)])
        return None

    inner = {
        id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)
    }
    keywords: set[tuple[str, str]] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute | ast.Name)
            and id(node) not in inner
            and isinstance(node.ctx, ast.Load)
        ):
            if (name := resolve(node)) is not None:
                used.add(name)
        if isinstance(node, ast.Call) and (name := resolve(node.func)) is not None:
            keywords |= {(name, kw.arg) for kw in node.keywords if kw.arg is not None}
    return used, keywords


def used_by_the_package() -> tuple[
    dict[str, list[str]], dict[tuple[str, str], list[str]]
]:
    names: dict[str, list[str]] = {}
    keywords: dict[tuple[str, str], list[str]] = {}
    for path in PACKAGE_MODULES:
        found, calls = names_used(ast.parse(path.read_text(encoding="utf-8")))
        for name in found:
            names.setdefault(name, []).append(path.name)
        for call in calls:
            keywords.setdefault(call, []).append(path.name)
    return names, keywords


def floor_of(name: str) -> Version:
    return declared_floor(name.split(".")[0])


# ---- Python -----------------------------------------------------------------------------------------


def test_ci_runs_the_declared_minimum_python():
    """The floor is what CI tests (.ci/run and the Makefile install Python 3.11)."""
    assert declared_python() == (3, 11)
    assert sys.version_info[:2] >= declared_python()


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_module_parses_with_the_minimum_python_grammar(path):
    ast.parse(
        path.read_text(encoding="utf-8"),
        filename=str(path),
        feature_version=declared_python(),
    )


def test_the_grammar_check_would_catch_newer_syntax():
    with pytest.raises(SyntaxError):  # PEP 695 generics are Python 3.12
        ast.parse(
            "def first[T](items: list[T]) -> T:\n    return items[0]\n",
            feature_version=(3, 11),
        )


# ---- torch and torchvision --------------------------------------------------------------------------


def test_the_package_uses_no_torch_api_newer_than_the_declared_floor():
    names, keywords = used_by_the_package()
    unknown = {
        name: where
        for name, where in names.items()
        if name not in ADDED and name not in SINCE_1X
    }
    assert not unknown, (
        f"torch/torchvision names with no known version: {unknown}; add each to ADDED with the release that "
        "introduced it (or to SINCE_1X if torch 1.x already had it)"
    )
    too_new = {
        name: (ADDED[name], where)
        for name, where in names.items()
        if name in ADDED and Version(ADDED[name]) > floor_of(name)
    }
    assert not too_new, f"newer than the declared floors in pyproject.toml: {too_new}"
    late = {
        call: (version, keywords[call])
        for call, version in KEYWORDS_ADDED.items()
        if call in keywords
    }
    assert all(
        Version(version) <= floor_of(call[0]) for (call, (version, _)) in late.items()
    ), late


def test_the_floors_are_the_matching_torch_torchvision_pair():
    assert declared_floor("torch") == Version(
        "2.3"
    )  # torch.amp.GradScaler("cuda") in going_modular.engine
    assert declared_floor("torchvision") == Version(
        "0.18"
    )  # the torchvision released with torch 2.3


def test_the_table_names_exist_in_the_installed_torch():
    """Each name exists in the installed torch and torchvision, unless the table says it came later (at the floors,
    in CI's floors job, torch.nn.RMSNorm of torch 2.4 is not there yet)."""
    import importlib
    import importlib.metadata

    installed = {root: Version(importlib.metadata.version(root)) for root in ROOTS}
    for name in sorted(
        set(ADDED) | SINCE_1X | {function for function, _ in KEYWORDS_ADDED}
    ):
        parts = name.split(".")
        if name in ADDED and Version(ADDED[name]) > installed[parts[0]]:
            continue
        obj = importlib.import_module(parts[0])
        for i, part in enumerate(parts[1:], 1):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                obj = importlib.import_module(".".join(parts[: i + 1]))
        assert obj is not None, name


def test_the_scan_resolves_aliases_and_flags_what_the_tables_do_not_know():
    source = (
        "import torch\nimport torch.nn.functional as F\nfrom torch import nn\nfrom torch.amp import GradScaler\n"
        "from torchvision.transforms import v2\n"
        "x = F.scaled_dot_product_attention(q, k, v)\nlayer = nn.GELU(approximate='tanh')\n"
        "y = torch.brand_new_api(torch.float32.itemsize)\nz = v2.Resize(3)\nscaler = GradScaler('cuda')\n"
    )
    used, keywords = names_used(ast.parse(source))
    assert {
        "torch.nn.functional.scaled_dot_product_attention",
        "torch.nn.GELU",
        "torch.amp.GradScaler",
        "torch.brand_new_api",
        "torch.float32.itemsize",
        "torchvision.transforms.v2.Resize",
    } <= used
    assert "torch.nn.functional" in used and "torch.nn" in used
    assert ("torch.nn.GELU", "approximate") in keywords
    assert {name for name in used if name not in ADDED and name not in SINCE_1X} == {
        "torch.brand_new_api",
        "torch.float32.itemsize",
    }
