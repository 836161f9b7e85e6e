"""Where dataset files are looked for, and what to tell the user when they are not there."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .base import DatasetError, canonical_name, source

__all__ = ["REPO_ROOT", "SYSTEM_DATASETS", "search_dirs", "how_to_get", "not_found"]

REPO_ROOT = Path(__file__).resolve().parents[3]
SYSTEM_DATASETS = Path("/usr/share/datasets")  # where Debian's dataset packages install


def search_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The directories searched for dataset ``name``, in lookup order:

    1. ``data_dir`` (if given): the files directly in it, or in ``data_dir/NAME/``;
    2. ``data/NAME/`` relative to the current working directory;
    3. ``data/NAME/`` relative to the repository root (when running from a checkout);
    4. for a dataset Debian packages (MNIST and Fashion-MNIST): ``/usr/share/datasets/NAME/``."""
    name = canonical_name(name)
    dirs: list[Path] = []
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        dirs += [d, d / name]
    dirs.append(Path.cwd() / "data" / name)
    if (REPO_ROOT / "pyproject.toml").is_file():
        dirs.append(REPO_ROOT / "data" / name)
    if source(name).system_dir:
        dirs.append(SYSTEM_DATASETS / name)
    out: list[Path] = []
    seen: set[str] = set()
    for d in dirs:
        key = os.path.abspath(d)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def how_to_get(name: str) -> str:
    package = source(name).debian_package
    msg = f"run `fda data fetch {name}` on a machine with internet access (it writes data/{name}/)"
    if package:
        msg += f", or on Debian/Ubuntu `apt-get install {package}` (installs {SYSTEM_DATASETS / name}/)"
    msg += "; then copy the files to one of the directories above or pass data_dir. See data/README.md."
    return msg


def not_found(name: str, dirs: Sequence[Path], wanted: str) -> DatasetError:
    looked = "\n  ".join(str(d) for d in dirs)
    return DatasetError(
        f"dataset {name!r} not found: looked for {wanted} in\n  {looked}\nTo get it: {how_to_get(name)}"
    )
