"""``python -m fda.data.ensure NAME [DATA_DIR]`` (and ``fda data ensure``): make a dataset loadable.

What `make demo` runs on a fresh machine. In order, it stops at the first that works:

1. the dataset already loads (``load_dataset``'s search path): nothing to do;
2. one of its official mirrors answers: ``fda data fetch NAME`` into ``data/NAME/``
   (MD5-checked, then parsed);
3. Debian/Ubuntu, running as root, and the dataset is packaged (Fashion-MNIST:
   ``dataset-fashion-mnist``): ``apt-get install`` it (``apt-get update`` first if apt does
   not know the package yet);
4. otherwise: exit 1 with the exact commands to run (``sudo apt-get install ...``, or
   ``fda data fetch NAME`` on a machine with internet and a copy of ``data/NAME/``).

Exit status 0 when the dataset loads at the end, 1 when it could not be obtained, 2 for usage.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Callable

from .base import DatasetError, canonical_name, source
from .datasets import load_dataset
from .fetch import SOURCES, fetch
from .paths import REPO_ROOT, SYSTEM_DATASETS

PROBE_TIMEOUT_S = 5.0


def mirrors_reachable(name: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to one of the dataset's mirrors opens (a quick test for internet:
    offline machines often drop packets instead of refusing, and a download would wait a minute per file)."""
    hosts = {}
    for _, urls, _ in SOURCES.get(name, []):
        for url in urls:
            u = urllib.parse.urlsplit(url)
            hosts.setdefault(u.hostname, u.port or (443 if u.scheme == "https" else 80))
    for host, port in hosts.items():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            return True
        except OSError:
            continue
    return False


def debian_root() -> bool:
    """Debian or Ubuntu with apt-get, and we are root (so apt-get install can run here)."""
    return Path("/etc/debian_version").is_file() and shutil.which("apt-get") is not None and os.geteuid() == 0


def _apt_install(package: str, run: Callable) -> bool:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", package]
    if run(install, env=env).returncode == 0:
        return True
    print(f"fda: apt-get does not know {package} yet: apt-get update, then install", file=sys.stderr)
    return run(["apt-get", "update", "-q"], env=env).returncode == 0 and run(install, env=env).returncode == 0


def instructions(name: str) -> str:
    """The exact commands that obtain `name`, for the user to run."""
    lines = []
    package = source(name).debian_package
    if package:
        lines.append(f"  sudo apt-get install {package}      # Debian/Ubuntu: {SYSTEM_DATASETS / name}/")
    lines.append(f"  .venv/bin/fda data fetch {name}      # on a machine with internet: writes data/{name}/ "
                 "(then copy that directory here)")
    return "\n".join(lines)


def _default_dest() -> Path:
    """Where a download goes: data/ of the repository when running from a checkout, else of the cwd."""
    return REPO_ROOT / "data" if (REPO_ROOT / "pyproject.toml").is_file() else Path.cwd() / "data"


def ensure(name: str, data_dir: str | os.PathLike | None = None, *, dest: str | os.PathLike | None = None,
           online: Callable[[str], bool] | None = None, can_apt: Callable[[], bool] | None = None,
           run: Callable = subprocess.run, say: Callable[[str], None] = print):
    """Load `name`, obtaining it first if it is missing (see the module docstring). Returns the Dataset.

    Raises DatasetError (with the commands to run) when every way failed. `dest` is where a
    download goes (default: data/ of the repository, else of the current directory); online, can_apt
    and run stand in for the network probe, the Debian/root test and subprocess.run (tests)."""
    online = online or mirrors_reachable
    can_apt = can_apt or debian_root
    name = canonical_name(name)
    try:
        return load_dataset(name, data_dir)
    except DatasetError as e:
        missing = e
    if name not in SOURCES:  # generated, or a dataset the loader found but could not parse
        raise missing
    tried = []
    if online(name):
        target = Path(dest) if dest is not None else _default_dest()
        say(f"fda: {name} not found; downloading it from its official mirrors into {target / name} (MD5-checked)")
        try:
            fetch(name, target)
            return load_dataset(name, target / name)
        except DatasetError as e:
            tried.append(f"download: {e}")
    else:
        tried.append("download: no mirror reachable (no internet)")
    package = source(name).debian_package
    if package and can_apt():
        say(f"fda: {name} not found, no internet: installing the Debian package {package} with apt-get")
        if _apt_install(package, run):
            return load_dataset(name, data_dir)
        tried.append(f"apt-get install {package} failed (see above)")
    elif package:
        tried.append("apt-get: not Debian/Ubuntu, or not root")
    raise DatasetError(f"dataset {name!r} is missing and could not be obtained here ("
                       + "; ".join(tried) + f").\nRun one of:\n{instructions(name)}")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or len(args) > 2:
        print("usage: python -m fda.data.ensure NAME [DATA_DIR]", file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    try:
        ds = ensure(args[0], args[1] if len(args) > 1 else None)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"ok: {ds.name} ({ds.num_train} train / {ds.num_test} test) from {ds.source or '(generated)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
