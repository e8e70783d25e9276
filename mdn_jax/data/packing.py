"""Sequence packing: a stream of tokenized documents cut into rows [T] with per-row segment ids.

Documents are concatenated in order (each already ends with eos if the tokenizer has one) and the stream is cut
every T tokens (concat-then-split): no token is dropped or repeated, and a document that crosses a row boundary
continues in the next row. Within a row, segment ids are 1, 2, ... one per (piece of a) document, so the model
resets its state at each document start; padding (only in the last row of a finite stream) has segment id 0.

The iterator state is `{"doc": index of the current document in the parent, "offset": tokens of it consumed}`:
restoring it re-reads that one document and continues with the next unseen token.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np


class _PackIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.MapDataset, seq_len: int, pad_id: int):
        super().__init__()
        self._docs, self._T, self._pad = parent, int(seq_len), int(pad_id)
        self._n = len(parent)
        self._doc, self._offset, self._cur = 0, 0, None

    def __next__(self) -> dict[str, np.ndarray]:
        T = self._T
        tokens = np.full((T,), self._pad, np.int32)
        seg = np.zeros((T,), np.int32)
        filled, s = 0, 0
        while filled < T:
            if self._cur is None:
                if self._doc >= self._n:
                    break
                self._cur = np.asarray(self._docs[self._doc], np.int32)
            take = min(T - filled, len(self._cur) - self._offset)
            if take > 0:
                s += 1
                tokens[filled:filled + take] = self._cur[self._offset:self._offset + take]
                seg[filled:filled + take] = s
                filled += take
                self._offset += take
            if self._offset >= len(self._cur):
                self._doc, self._offset, self._cur = self._doc + 1, 0, None
        if filled == 0:
            raise StopIteration
        return {"tokens": tokens, "segment_ids": seg}

    def get_state(self) -> dict[str, Any]:
        return {"doc": int(self._doc), "offset": int(self._offset)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._doc, self._offset, self._cur = int(state["doc"]), int(state["offset"]), None


class PackIterDataset(grain.IterDataset):
    """Pack a MapDataset of int token arrays (documents) into rows {"tokens": [T] int32, "segment_ids": [T] int32}."""

    def __init__(self, parent: grain.MapDataset, seq_len: int, pad_id: int = 0):
        super().__init__(parent)
        self._seq_len, self._pad_id = seq_len, pad_id

    def __iter__(self) -> _PackIterator:
        return _PackIterator(self._parent, self._seq_len, self._pad_id)

    def __str__(self) -> str:
        return f"PackIterDataset(seq_len={self._seq_len})"


def targets_and_mask(tokens, segment_ids):
    """Next-token targets [B, T] and a bool mask [B, T]: position t predicts t+1 when both are in the same document.

    Works on numpy or jax arrays. The last position of each row and the last token of each document piece
    (whose successor is another document or padding) are masked out.
    """
    xp = np if isinstance(tokens, np.ndarray) else __import__("jax.numpy", fromlist=["numpy"])
    nxt = xp.concatenate([tokens[:, 1:], xp.zeros_like(tokens[:, :1])], axis=1)
    nseg = xp.concatenate([segment_ids[:, 1:], xp.zeros_like(segment_ids[:, :1])], axis=1)
    mask = (segment_ids > 0) & (nseg == segment_ids)
    return nxt, mask
