"""Next-character prediction with natural clients: one client per speaking role of a play (LEAF's
Shakespeare task, the FedAvg paper's), or one client per text file of a folder.

Each client's text becomes windows of ``window`` characters labelled with the character that
follows (LEAF: 80 -> 1), so a text of ``N`` characters gives ``N - window`` samples. The split is
by position, as LEAF's: a client's first windows train, its last ``test_fraction`` are held out
(their labels are the last part of its text and never a training label), and the server's test
set is every client's held-out windows. Windows never cross from one client's text into another's.

Vocabulary (:data:`VOCAB`): a fixed character set, so every loader and every deployed client
agrees on token ids without sharing a file. Id 0 is out-of-vocabulary, id 1 the newline, ids
2..96 printable ASCII (space ``' '`` to ``'~'``) in code-point order: 97 tokens. Any other
character (accented letters, tabs, emoji) maps to 0.

References: Caldas et al., "LEAF: A Benchmark for Federated Settings" (2018); McMahan et al.,
"Communication-Efficient Learning of Deep Networks from Decentralized Data" (2017).
"""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path

import numpy as np

from fedfleet.data._base import TaskData
from fedfleet.data._windows import TokenWindows
from fedfleet.errors import DatasetError

__all__ = [
    "OOV",
    "VOCAB",
    "VOCAB_SIZE",
    "decode",
    "encode",
    "load_text_folder",
    "parse_play",
    "shakespeare",
    "text_task",
]

VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
"""Token ``i + 1`` is ``VOCAB[i]``; token 0 (:data:`OOV`) is any character not in it."""
OOV = 0
VOCAB_SIZE = len(VOCAB) + 1
"""97: the out-of-vocabulary id, the newline and the 95 printable ASCII characters."""

DEFAULT_WINDOW = 80
"""LEAF's and the FedAvg paper's context: 80 characters predict the 81st."""
DEFAULT_MIN_WINDOWS = 64
"""A client needs at least this many windows (``window + 64`` characters) to be kept."""

_TABLE = np.zeros(128, dtype=np.int64)
_TABLE[[ord(c) for c in VOCAB]] = np.arange(1, VOCAB_SIZE)
_ROLE = re.compile(r"^[A-Za-z][A-Za-z0-9 ,.'&-]*:$")


def encode(text: str) -> np.ndarray:
    """Token ids (int64) of ``text``; characters outside :data:`VOCAB` become :data:`OOV`."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    out = np.zeros(len(codes), dtype=np.int64)
    ascii_ = codes < 128
    out[ascii_] = _TABLE[codes[ascii_]]
    return out


def decode(tokens: np.ndarray) -> str:
    """The text of token ids; :data:`OOV` is shown as U+FFFD."""
    chars = "\ufffd" + VOCAB
    return "".join(chars[int(t)] for t in tokens)


def parse_play(text: str) -> dict[str, str]:
    """Each speaking role's lines, in order of first appearance, LEAF's way.

    The play format of tiny Shakespeare: speeches separated by blank lines, each opening with a
    line holding only the speaker's name and a colon (``First Citizen:``). A role's text is its
    speeches in order, joined by spaces, with every run of whitespace (line breaks included)
    turned into one space, as LEAF's preprocessing does. A block that does not open with a
    name line has no speaker and is skipped. Roles are told apart by name only: tiny
    Shakespeare has no play titles, so a name used in several plays is one role.
    """
    roles: dict[str, list[str]] = {}
    for block in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        lines = block.strip("\n").split("\n")
        head = lines[0].strip()
        if len(lines) < 2 or not _ROLE.match(head):
            continue
        speech = " ".join(" ".join(lines[1:]).split())
        if speech:
            roles.setdefault(head[:-1].strip(), []).append(speech)
    return {name: " ".join(speeches) for name, speeches in roles.items()}


def text_task(
    texts: dict[str, str],
    name: str,
    *,
    window: int = DEFAULT_WINDOW,
    test_fraction: float = 0.2,
    min_windows: int = DEFAULT_MIN_WINDOWS,
    test_stride: int = 1,
) -> TaskData:
    """A next-character task with one natural client per entry of ``texts`` (kept in order).

    Client ``k``'s text of ``N`` characters gives ``M = N - window`` windows; the first
    ``M - ceil(test_fraction * M)`` train (indices ``natural_train[k]`` into ``train``), the
    rest are held out (``natural_test[k]`` into ``test``, the server's test set). Clients with
    fewer than ``min_windows`` windows are dropped. ``test_stride = s`` keeps every s-th
    held-out window (from each client's first): neighbouring windows share all but one
    character, so a stride evaluates the same text at 1/s of the cost (an LSTM of 256 units
    takes minutes on a CPU core for tiny Shakespeare's 200,000 held-out windows).

    Raises:
        DatasetError: bad ``window``/``test_fraction``/``min_windows``, or no client left.
    """
    if window < 1:
        raise DatasetError(f"{name}: window must be >= 1 character, got {window}")
    if not 0 < test_fraction < 1:
        raise DatasetError(f"{name}: test_fraction must be in (0, 1), got {test_fraction}")
    if test_stride < 1:
        raise DatasetError(f"{name}: test_stride must be >= 1, got {test_stride}")
    if min_windows < 2:
        raise DatasetError(
            f"{name}: min_windows must be >= 2 (one to train, one held out), got {min_windows}"
        )
    kept = {k: encode(t) for k, t in texts.items() if len(t) - window >= min_windows}
    if not kept:
        longest = max((len(t) for t in texts.values()), default=0)
        raise DatasetError(
            f"{name}: no client has {window + min_windows} characters (window {window} + "
            f"min_windows {min_windows}); {len(texts)} found, the longest with {longest}; "
            "lower min_windows or window, or give more text"
        )
    tokens = np.concatenate(list(kept.values()))
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in kept.values()])])
    train_starts, test_starts = [], []
    for start, tok in zip(offsets[:-1], kept.values(), strict=True):
        m = len(tok) - window
        n_test = int(np.ceil(test_fraction * m))
        windows = np.arange(start, start + m, dtype=np.int64)
        train_starts.append(windows[: m - n_test])
        test_starts.append(windows[m - n_test :: test_stride])

    def indices(parts: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        bounds = np.cumsum([0] + [len(p) for p in parts])
        return tuple(np.arange(a, b, dtype=np.int64) for a, b in pairwise(bounds))

    return TaskData(
        name=name,
        train=TokenWindows(tokens, np.concatenate(train_starts), window),
        test=TokenWindows(tokens, np.concatenate(test_starts), window),
        num_classes=VOCAB_SIZE,
        input_shape=(window,),
        natural_train=indices(train_starts),
        natural_test=indices(test_starts),
        user_ids=tuple(kept),
    )


def shakespeare(
    path: str | Path,
    *,
    window: int = DEFAULT_WINDOW,
    test_fraction: float = 0.2,
    min_windows: int = DEFAULT_MIN_WINDOWS,
    test_stride: int = 1,
) -> TaskData:
    """Tiny Shakespeare (``input.txt``, or a folder holding it) as one client per speaking role.

    With the defaults, the 1.1 MB file gives the roles with at least 144 characters; see
    :func:`parse_play` for how roles and their text are read and :func:`text_task` for the
    windows and the split.
    """
    file = Path(path)
    if file.is_dir():
        file = file / "input.txt"
    text = _read(file, "shakespeare")
    roles = parse_play(text)
    if not roles:
        raise DatasetError(
            f"shakespeare: no speaking roles in {file}; expected the play format (a line "
            "'NAME:' opening each speech, speeches separated by blank lines)"
        )
    return text_task(
        roles,
        "shakespeare",
        window=window,
        test_fraction=test_fraction,
        min_windows=min_windows,
        test_stride=test_stride,
    )


def load_text_folder(
    path: str | Path,
    *,
    window: int = DEFAULT_WINDOW,
    test_fraction: float = 0.2,
    min_windows: int = DEFAULT_MIN_WINDOWS,
    test_stride: int = 1,
) -> TaskData:
    """One client per ``*.txt`` file of a folder (in file-name order, named by the file's stem),
    its text as written (UTF-8, newlines kept); see :func:`text_task`."""
    folder = Path(path)
    if not folder.is_dir():
        raise DatasetError(f"text: {folder} is not a directory of .txt files (one per client)")
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise DatasetError(f"text: no *.txt files in {folder}; put one text file per client there")
    texts = {f.stem: _read(f, "text") for f in files}
    return text_task(
        texts,
        "text",
        window=window,
        test_fraction=test_fraction,
        min_windows=min_windows,
        test_stride=test_stride,
    )


def _read(file: Path, name: str) -> str:
    if not file.is_file():
        raise DatasetError(
            f"{name}: {file} does not exist; point data.path (or $FEDFLEET_DATA) at it"
        )
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{name}: {file} is not UTF-8 text ({e})") from None
