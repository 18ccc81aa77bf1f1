"""Text and token ids for sequence models: the data side of the ``language_model`` task, and
the input path of every model that reads token ids.

Language model data: a text (a UTF-8 file, or the embedded ``"python-docs"`` corpus, which
ships with Python itself) becomes character ids through a :func:`vocabulary` built from the
text; the text is cut into a training part, a validation part and a test tail, and each part
into windows of ``T + 1`` characters: ``x`` is a window's first ``T`` ids, ``y`` its last
``T`` (the next character at every step). Evaluation uses the fixed windows; training draws
fresh windows at random offsets every epoch (:func:`random_windows`).

Token ids (:class:`TokenIds`) stay integers all the way to the model: no scaling, no resizing;
samples are padded with id 0 or cut to the model's length, and ids the model's embedding
cannot look up are refused with a message saying what to change.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dlspec.train.data import DataError, Dataset

__all__ = [
    "CORPUS_CHARS",
    "PYTHON_DOCS",
    "TokenIds",
    "check_vocabulary",
    "decode",
    "encode",
    "perplexity",
    "python_docs",
    "random_windows",
    "read_text",
    "text_splits",
    "vocabulary",
]

#: The name of the embedded corpus: Python's interactive help texts (``help("assert")``).
PYTHON_DOCS = "python-docs"
#: How many characters of it are used (whole lines, sorted by help topic).
CORPUS_CHARS = 400_000

# typographic characters -> ASCII, so that the corpus's vocabulary is printable ASCII and "\n"
_ASCII = str.maketrans(
    {"‘": "'", "’": "'", "“": '"', "”": '"', "–": "-", "—": "--", "…": "...", "\t": "    "}
)
_PRINTABLE = frozenset(chr(c) for c in range(32, 127)) | {"\n"}

# fallback corpus: where pydoc_data is stripped from a Python, these modules' docstrings
_DOC_MODULES = (
    "argparse",
    "collections",
    "contextlib",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email.message",
    "enum",
    "fractions",
    "functools",
    "heapq",
    "inspect",
    "io",
    "itertools",
    "json",
    "logging",
    "os",
    "pathlib",
    "pprint",
    "random",
    "re",
    "shutil",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "unittest",
    "urllib.parse",
    "zipfile",
)


def _ascii(text: str) -> str:
    """``text`` with typographic quotes and dashes made ASCII and other characters outside
    printable ASCII (and newlines) dropped."""
    return "".join(c for c in text.translate(_ASCII) if c in _PRINTABLE)


def _help_topics() -> list[str]:
    """The interactive help texts, sorted by topic; empty when this Python lacks them."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return []
    return [str(topics[key]) for key in sorted(topics)]


def _docstrings() -> list[str]:
    """The docstrings of some standard-library modules and their public members."""
    texts = []
    for name in _DOC_MODULES:
        module = importlib.import_module(name)
        members = sorted(m for m in vars(module) if not m.startswith("_"))
        for obj in [module, *(getattr(module, m) for m in members)]:
            doc = inspect.getdoc(obj) if inspect.ismodule(obj) or callable(obj) else None
            if doc and (obj is module or getattr(obj, "__module__", None) == name):
                texts.append(doc)
    return texts


def python_docs(size: int = CORPUS_CHARS) -> str:
    """The embedded corpus: Python's interactive help texts (``pydoc_data.topics``, about
    460,000 characters of prose and code examples), sorted by topic, made ASCII, cut to the
    last whole line within ``size`` characters. Where a Python ships without them, the
    docstrings of some standard-library modules stand in. The same Python gives the same
    text; another Python version may give a slightly different one."""
    texts = _help_topics() or _docstrings()
    text = _ascii("\n\n".join(t.strip("\n") for t in texts)) + "\n"
    if len(text) > size:
        text = text[: text.rfind("\n", 0, size) + 1]
    return text


def read_text(source: str | os.PathLike[str]) -> tuple[str, str]:
    """``(name, text)`` of a text source: ``"python-docs"`` (:func:`python_docs`, used when no
    file of that name exists) or a UTF-8 text file. Raises :class:`DataError`."""
    path = Path(os.fspath(source)).expanduser()
    if not path.exists() and os.fspath(source).strip().lower() == PYTHON_DOCS:
        return PYTHON_DOCS, python_docs()
    if not path.is_file():
        what = "a directory" if path.is_dir() else "no such file"
        raise DataError(
            f"{what}; the language_model task reads a UTF-8 text file, or {PYTHON_DOCS!r} "
            "(the text of Python's help, no download needed)",
            path,
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"not UTF-8 text (byte {exc.start:,}: {exc.reason}); the language_model task "
            "reads text files",
            path,
        ) from None
    except OSError as exc:
        raise DataError(f"cannot read file: {exc.strerror or exc}", path) from None
    if not text:
        raise DataError("the file is empty", path)
    return path.stem, text


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def vocabulary(text: str) -> list[str]:
    """The characters of ``text``, sorted by code point: character ``i`` has id ``i``."""
    return [chr(c) for c in np.unique(_code_points(text)).tolist()]


def encode(text: str, vocab: Sequence[str]) -> torch.Tensor:
    """``text`` as int64 character ids of ``vocab`` (as :func:`vocabulary` makes it: sorted).
    Raises ValueError listing the characters that are not in ``vocab``."""
    codes = _code_points(text)
    table = np.asarray([ord(c) for c in vocab], dtype=np.uint32)
    ids = np.searchsorted(table, codes).clip(0, max(len(table) - 1, 0))
    known = table[ids] == codes if len(table) else np.zeros(len(codes), dtype=bool)
    if not known.all():
        missing = sorted({chr(c) for c in codes[~known].tolist()})
        raise ValueError(
            f"{len(missing)} character(s) not in the vocabulary: "
            + " ".join(repr(c) for c in missing)
        )
    return torch.from_numpy(ids.astype(np.int64))


def decode(ids: Iterable[int], vocab: Sequence[str]) -> str:
    """Character ids back to text."""
    return "".join(vocab[i] for i in ids)


def _windows(ids: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Consecutive windows of ``length + 1`` ids, overlapping by one: ``x`` and ``y`` are
    ``(n, length)``, ``y`` one step ahead of ``x``; the ids after the last whole window are
    left out."""
    n = (len(ids) - 1) // length
    x = ids[: n * length].reshape(n, length)
    y = ids[1 : n * length + 1].reshape(n, length)
    return x, y


def text_splits(
    source: str | os.PathLike[str], length: int, val_split: float, test_split: float
) -> tuple[Dataset, Dataset | None, Dataset]:
    """The text of ``source`` (:func:`read_text`) as next-character windows of ``length``
    steps: ``(train, val, test)``, from the start of the text, then ``val_split`` of it (none
    when 0), then the last ``test_split``. Each dataset's ``classes`` is the vocabulary of
    the whole text; ``x`` and ``y`` are int64 ``(n, length)`` (see :func:`_windows`)."""
    name, text = read_text(source)
    vocab = vocabulary(text)
    ids = encode(text, vocab)
    total = len(ids)
    test_start = total - math.floor(total * test_split + 0.5)
    val_start = test_start - math.floor(total * val_split + 0.5)
    parts = {"train": ids[:val_start], "val": ids[val_start:test_start], "test": ids[test_start:]}
    out: dict[str, Dataset] = {}
    for part, part_ids in parts.items():
        if part == "val" and val_split == 0:
            continue
        if len(part_ids) < length + 1:
            raise DataError(
                f"the {part} part holds {len(part_ids):,} of the text's {total:,} characters, "
                f"fewer than one window of T + 1 = {length + 1:,}; use a longer text, a "
                "smaller T (--set T=...) or other val_split / test_split",
                source,
            )
        x, y = _windows(part_ids, length)
        out[part] = Dataset(x, y, list(vocab), f"{name}/{part}")
    return out["train"], out.get("val"), out["test"]


def random_windows(
    x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """As many windows as ``x`` holds, at random offsets of the text that the consecutive
    windows ``x`` / ``y`` (as :func:`text_splits` cuts them) spell: one epoch's training
    data, a fresh draw from ``generator`` every time."""
    n, length = x.shape
    text = torch.cat([x.reshape(-1), y[-1, -1:]])  # the n * length + 1 ids
    starts = torch.randint(0, len(text) - length, (n, 1), generator=generator)
    index = starts.to(text.device) + torch.arange(length, device=text.device)  # (n, length)
    return text[index], text[index + 1]


def perplexity(loss: float) -> float:
    """exp of a mean cross-entropy (nats): the number of equally likely choices the model is
    as unsure as; infinite for a diverged loss."""
    return math.exp(loss) if loss < 700 else math.inf


def check_vocabulary(size: int, scores: int, token_limit: int, source: str) -> None:
    """Raise :class:`DataError` when a language model that embeds ids below ``token_limit``
    and outputs ``scores`` per step has no room for a text of ``size`` distinct characters."""
    room = min(scores, token_limit)
    if size > room:
        raise DataError(
            f"the text has {size} distinct characters, but the model's vocabulary holds "
            f"{room} (it embeds ids below {token_limit} and scores {scores} per step); "
            f"give it room for all of them: --set vocab={size}",
            source,
        )


@dataclass(frozen=True)
class TokenIds:
    """The input path of a model that reads token ids, in place of
    :class:`~dlspec.train.transforms.Augment`: ``tokens(x, generator)`` (training) and
    ``tokens.eval(x)`` pad each sample with id 0 at its end, or cut it, to ``length`` ids,
    as int64; nothing else changes them. :meth:`check` verifies whole datasets up front:
    ids must be whole numbers from 0 to ``limit - 1``."""

    length: int
    limit: int

    def check(self, parts: Iterable[Dataset | None], source: str) -> TokenIds:
        """Raise :class:`DataError` for the first dataset among ``parts`` whose samples are
        not ``(N, L)`` token ids below ``limit``; return self."""
        for part in parts:
            if part is None:
                continue
            x = part.x
            if x.ndim != 2:
                raise DataError(
                    f"{part.name}: samples of shape {tuple(x.shape[1:])}; the model reads "
                    f"sequences of {self.length} token ids, so the data must be (N, L) ids",
                    source,
                )
            if x.is_floating_point() and not bool((x == x.round()).all()):
                raise DataError(
                    f"{part.name}: the model reads token ids, but the data holds decimal "
                    "numbers; store the ids as integers (uint8 arrays are read as pixels "
                    "and scaled to [0, 1], so use int64 or int32)",
                    source,
                )
            low, high = int(x.min()), int(x.max())
            if low < 0 or high >= self.limit:
                bad = low if low < 0 else high
                sample = int(((x == bad).any(dim=1)).nonzero()[0])
                raise DataError(
                    f"{part.name}: token id {bad} (sample {sample}) is out of range: the "
                    f"model's embedding looks up ids 0 to {self.limit - 1}"
                    + (f"; give it room for them: --set vocab={high + 1}" if low >= 0 else ""),
                    source,
                )
        return self

    def eval(self, x: torch.Tensor) -> torch.Tensor:
        """A batch ``(B, L)`` as ``(B, length)`` int64 ids: padded with 0 or cut."""
        x = x.long()
        if x.shape[1] >= self.length:
            return x[:, : self.length]
        return torch.nn.functional.pad(x, (0, self.length - x.shape[1]))

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The training path: the same as :meth:`eval` (token ids are not augmented)."""
        return self.eval(x)
