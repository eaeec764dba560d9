"""The text tasks: roles of a play (or files of a folder) as clients, windows and their labels,
the split by position, and the vocabulary; on a small play written here, and on tiny Shakespeare
when ../shared/data holds it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedfleet.data import Subset, TaskData, TokenWindows, load_task
from fedfleet.data._text import (
    OOV,
    VOCAB,
    VOCAB_SIZE,
    decode,
    encode,
    load_text_folder,
    parse_play,
    shakespeare,
)
from fedfleet.errors import DatasetError
from fedfleet.sim import Federation

SHAKESPEARE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "shakespeare"

PLAY = """\
ALICE:
Hello there,   friend.
How are you?

BOB:
Fine, and
you?

a block with no speaker line
is skipped

ALICE:
Well met.

CAROL:
Hi.
"""
ALICE = "Hello there, friend. How are you? Well met."  # 43 characters: 39 windows of 4
BOB = "Fine, and you?"  # 14 characters: 10 windows of 4


def _task(tmp_path: Path, **options: float) -> TaskData:
    (tmp_path / "input.txt").write_text(PLAY)
    kwargs = {"window": 4, "test_fraction": 0.25, "min_windows": 2, **options}
    return shakespeare(tmp_path, **kwargs)  # type: ignore[arg-type]


def test_a_play_is_split_into_roles_with_their_speeches_joined_as_leaf_does():
    assert parse_play(PLAY) == {"ALICE": ALICE, "BOB": BOB, "CAROL": "Hi."}


def test_each_role_is_a_client_with_its_first_windows_for_training_and_its_last_held_out(
    tmp_path,
):
    task = _task(tmp_path)
    assert task.user_ids == ("ALICE", "BOB")  # CAROL's 3 characters make no window of 4
    assert task.num_classes == VOCAB_SIZE and task.input_shape == (4,)
    # ALICE: 39 windows, ceil(0.25 * 39) = 10 held out; BOB: 10 windows, 3 held out
    assert [len(p) for p in task.natural_train] == [29, 7]
    assert [len(p) for p in task.natural_test] == [10, 3]
    assert len(task.train) == 36 and len(task.test) == 13
    alice, bob = task.train.subset(task.natural_train[0]), task.train.subset(task.natural_train[1])
    assert decode(alice.x[0]) == "Hell" and decode(alice.y[:1]) == "o"
    assert decode(alice.x[-1]) == " you" and decode(alice.y[-1:]) == "?"
    assert decode(bob.x[-1]) == "and " and decode(bob.y[-1:]) == "y"
    held = task.test.subset(task.natural_test[0])
    assert decode(held.x[0]) == "you?" and decode(held.y[:1]) == " "
    assert decode(held.x[-1]) == " met" and decode(held.y[-1:]) == "."
    assert decode(task.test.subset(task.natural_test[1]).x[0]) == "nd y"
    # every label follows its window in the role's own text: no window crosses into BOB's
    for text, idx, pool in (
        (ALICE, task.natural_train[0], task.train),
        (BOB, task.natural_train[1], task.train),
        (ALICE, task.natural_test[0], task.test),
        (BOB, task.natural_test[1], task.test),
    ):
        part = pool.subset(idx)
        for row, label in zip(part.x, part.y, strict=True):
            window = decode(row)
            assert window + decode([label]) in text


def test_test_stride_keeps_every_kth_held_out_window(tmp_path):
    task = _task(tmp_path, test_stride=4)
    assert [len(p) for p in task.natural_train] == [29, 7]  # training is untouched
    held = task.test.subset(task.natural_test[0])
    assert [decode(r) for r in held.x] == ["you?", " Wel", "l me"]  # windows 29, 33, 37
    assert len(task.natural_test[1]) == 1


def test_roles_below_min_windows_are_dropped_and_none_left_is_an_error(tmp_path):
    assert _task(tmp_path, min_windows=11).user_ids == ("ALICE",)
    with pytest.raises(DatasetError, match="no client has 4004 characters"):
        _task(tmp_path, min_windows=4000)
    with pytest.raises(DatasetError, match="test_fraction"):
        _task(tmp_path, test_fraction=1.0)


def test_the_vocabulary_is_fixed_and_unknown_characters_are_oov():
    assert VOCAB_SIZE == 97 and VOCAB[0] == "\n" and VOCAB[1] == " " and VOCAB[-1] == "~"
    assert encode("\n A~").tolist() == [1, 2, 35, 96]
    assert encode("café\t").tolist() == [*encode("caf").tolist(), OOV, OOV]
    assert decode(encode("To be, or not to be!")) == "To be, or not to be!"


def test_a_folder_has_one_client_per_text_file_in_name_order_newlines_kept(tmp_path):
    (tmp_path / "b.txt").write_text("line one\nline two\n")
    (tmp_path / "a.txt").write_text("0123456789abcdef")
    (tmp_path / "notes.md").write_text("ignored, not .txt")
    task = load_text_folder(tmp_path, window=8, test_fraction=0.5, min_windows=2)
    assert task.user_ids == ("a", "b")
    a = task.train.subset(task.natural_train[0])
    assert [decode(r) for r in a.x] == ["01234567", "12345678", "23456789", "3456789a"]
    assert decode(a.y) == "89ab"
    b = task.test.subset(task.natural_test[1])
    assert decode(b.x[0]) == "one\nline" and decode(b.y[:1]) == " "
    with pytest.raises(DatasetError, match=r"is not a directory of \.txt files"):
        load_text_folder(tmp_path / "b.txt", window=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no \*\.txt files in .*empty"):
        load_text_folder(tmp_path / "empty", window=8)


def test_the_registry_loads_both_with_options(tmp_path):
    (tmp_path / "input.txt").write_text(PLAY)
    task = load_task("shakespeare", path=str(tmp_path), window=4, min_windows=2)
    assert task.user_ids == ("ALICE", "BOB")
    task = load_task("text", path=str(tmp_path), window=4, min_windows=2)
    assert task.user_ids == ("input",)


def test_a_clients_windows_are_a_view_over_the_token_array_and_the_pool_is_never_built(
    tmp_path,
):
    task = _task(tmp_path)
    fed = Federation(task, list(task.natural_train), list(task.natural_test), True)
    data = fed.train_data(0)
    assert isinstance(data, Subset)
    assert isinstance(task.train, TokenWindows)
    x = data.x
    assert x.dtype == np.int64 and x.shape == (29, 4)
    assert np.shares_memory(x, task.train.tokens)  # 29 windows, no copy of their 116 values
    assert task.train._x is None  # the whole pool's windows were never gathered
    rows, labels = data.rows(np.array([3, 0]))
    assert [decode(r) for r in rows] == ["lo t", "Hell"] and decode(labels) == "ho"


@pytest.mark.skipif(not (SHAKESPEARE / "input.txt").exists(), reason="no ../shared/data")
def test_tiny_shakespeare_gives_one_client_per_role_with_leaf_windows():
    task = shakespeare(SHAKESPEARE)
    text = (SHAKESPEARE / "input.txt").read_text()
    roles = parse_play(text)
    kept = [r for r, t in roles.items() if len(t) - 80 >= 64]
    assert task.user_ids == tuple(kept) and task.user_ids[0] == "First Citizen"
    assert len(task.user_ids) < len(roles)  # some roles say too little
    first = task.train.subset(task.natural_train[0])
    assert decode(first.x[0]) == roles["First Citizen"][:80]
    assert decode(first.x[0]).startswith("Before we proceed any further, hear me speak.")
    for k, role in enumerate(task.user_ids):
        m = len(roles[role]) - 80
        assert len(task.natural_train[k]) + len(task.natural_test[k]) == m
    assert not (task.train.y == OOV).any() and not (task.test.y == OOV).any()
