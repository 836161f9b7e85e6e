"""`make demo` on a fresh machine: the dataset is downloaded, else apt-installed, else the exact command is given."""
import subprocess
from pathlib import Path

import pytest

import fda.data.ensure as ensure_mod
import fda.data.paths as paths
from _helpers import write_idx_dataset
from fda.data import DatasetError, clear_cache
from fda.data.ensure import ensure


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """Fashion-MNIST is not installed: the loader only looks in tmp_path/searched (empty)."""
    searched = tmp_path / "searched"
    monkeypatch.setattr(paths, "search_dirs",
                        lambda name, data_dir=None: ([Path(data_dir)] if data_dir else []) + [searched])
    clear_cache()
    yield searched
    clear_cache()


def _never(*a, **k):
    raise AssertionError("must not be called")


def test_present_dataset_needs_nothing():
    ds = ensure("synthetic", online=_never, can_apt=_never, run=_never)
    assert ds.name == "synthetic"


def test_downloads_when_a_mirror_answers(nowhere, tmp_path, monkeypatch):
    fetched = []

    def fake_fetch(name, dest):
        fetched.append((name, Path(dest)))
        write_idx_dataset(Path(dest) / name)
        return Path(dest) / name

    monkeypatch.setattr(ensure_mod, "fetch", fake_fetch)
    said = []
    ds = ensure("fashion-mnist", dest=tmp_path / "data", online=lambda n: True, can_apt=_never, run=_never,
                say=said.append)
    assert fetched == [("fashion-mnist", tmp_path / "data")]
    assert ds.num_train == 20 and ds.source == str(tmp_path / "data" / "fashion-mnist")
    assert "downloading" in said[0] and "MD5" in said[0]


def test_apt_get_as_root_when_offline(nowhere):
    calls = []

    def fake_run(cmd, env=None):
        calls.append(cmd)
        assert env["DEBIAN_FRONTEND"] == "noninteractive"
        ok = cmd[:2] == ["apt-get", "update"] or len(calls) > 1  # the first install fails: unknown package
        if ok and cmd[:2] == ["apt-get", "install"]:
            write_idx_dataset(nowhere, gz=True)  # what the package installs
        return subprocess.CompletedProcess(cmd, 0 if ok else 100)

    ds = ensure("fashion-mnist", online=lambda n: False, can_apt=lambda: True, run=fake_run, say=lambda m: None)
    install = ["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"]
    assert calls == [install, ["apt-get", "update", "-q"], install]
    assert ds.num_test == 8


def test_gives_the_exact_commands_when_nothing_works(nowhere, monkeypatch, capsys):
    with pytest.raises(DatasetError) as ei:
        ensure("fashion-mnist", online=lambda n: False, can_apt=lambda: False, run=_never)
    msg = str(ei.value)
    assert "no mirror reachable" in msg
    assert "sudo apt-get install dataset-fashion-mnist" in msg
    assert "fda data fetch fashion-mnist" in msg
    # the entry point make demo uses: exit 1 and the same message
    monkeypatch.setattr(ensure_mod, "mirrors_reachable", lambda name: False)
    monkeypatch.setattr(ensure_mod, "debian_root", lambda: False)
    assert ensure_mod.main(["fashion-mnist"]) == 1
    assert "sudo apt-get install dataset-fashion-mnist" in capsys.readouterr().err
    assert ensure_mod.main([]) == 2


def test_mirror_probe_is_quick_offline(monkeypatch):
    import socket

    def refuse(addr, timeout):
        assert timeout <= ensure_mod.PROBE_TIMEOUT_S
        raise OSError("unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert ensure_mod.mirrors_reachable("fashion-mnist") is False
