"""Print the floors that pyproject.toml declares, as GitHub Actions step outputs (test.yml's floors job).

    python=3.11
    requirements=torch==2.3 torchvision==0.18

``python``: the lower bound of ``requires-python``; ``requirements``: the lower bound of each of torch and
torchvision pinned exactly (``==2.3`` is 2.3.0). Only the form ``>=X.Y`` is accepted: anything else is
an error that names the requirement, since the floor would then be unclear.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PINNED = (
    "torch",
    "torchvision",
)  # the packages whose floors the job installs; the rest stay unpinned
LOWER_BOUND = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9_.-]*)\s*>=\s*(?P<version>\d+(\.\d+)*)\s*$"
)


def lower_bound(requirement: str, name: str = "") -> str:
    """The X.Y of ``NAME>=X.Y`` (for ``requires-python``, of ``>=X.Y``); ValueError for any other form."""
    match = LOWER_BOUND.match(requirement)
    if not match or match["name"].lower() != name:
        expected = f"{name}>=X.Y" if name else ">=X.Y"
        raise ValueError(
            f"expected a requirement of the form {expected!r}, got {requirement!r}"
        )
    return match["version"]


def floors(pyproject: Path) -> dict[str, str]:
    """The step outputs: ``python`` and ``requirements`` (space-separated pins)."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    absent = [key for key in ("requires-python", "dependencies") if key not in project]
    if absent:
        raise ValueError(f"expected {absent} in the [project] table of {pyproject}")
    by_name = {
        re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0].lower(): dep
        for dep in project["dependencies"]
    }
    missing = [name for name in PINNED if name not in by_name]
    if missing:
        raise ValueError(
            f"expected {list(PINNED)} among the dependencies of {pyproject}, missing {missing}"
        )
    pins = [f"{name}=={lower_bound(by_name[name], name)}" for name in PINNED]
    return {
        "python": lower_bound(project["requires-python"]),
        "requirements": " ".join(pins),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "pyproject", nargs="?", type=Path, default=ROOT / "pyproject.toml"
    )
    args = parser.parse_args(argv)
    try:
        outputs = floors(args.pyproject)
    except (OSError, ValueError) as err:  # tomllib.TOMLDecodeError is a ValueError
        print(f"floors: error: {err}", file=sys.stderr)
        return 2
    for key, value in outputs.items():
        print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
