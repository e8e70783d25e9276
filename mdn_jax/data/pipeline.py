"""The grain input pipeline: source -> per-process shard -> seeded per-epoch shuffle -> tokenize -> pack -> batch
-> thread prefetch. One `DataPipeline` per process yields its local rows of the global batch.

Batches are dicts of numpy arrays: "tokens" [B_local, T] int32 and "segment_ids" [B_local, T] int32 (0 = padding).
`get_state()` / `set_state()` give a JSON-serialisable iterator state that is saved with every checkpoint, so a
resumed run continues with the next unseen batch.
"""

from __future__ import annotations

import grain
import numpy as np

from mdn_jax.data.packing import PackIterDataset
from mdn_jax.errors import UserError


class DataPipeline:
    """Wraps a grain DatasetIterator over packed batches."""

    def __init__(self, dataset: grain.IterDataset):
        self.dataset = dataset
        self.iterator = iter(dataset)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self.iterator)

    def get_state(self) -> dict:
        return self.iterator.get_state()

    def set_state(self, state: dict) -> None:
        self.iterator.set_state(state)

    def close(self) -> None:
        """Stop the prefetch thread (call before interpreter exit to avoid noisy shutdown)."""
        close = getattr(self.iterator, "close", None)
        if close is not None:
            close()


def _encode_fn(tokenizer):
    eos = tokenizer.eos_id

    def encode(text: str) -> np.ndarray:
        ids = tokenizer.encode(text)
        if eos is not None:
            ids = list(ids) + [eos]
        return np.asarray(ids, np.int32)

    return encode


def make_pipeline(source, tokenizer, *, seq_len: int, batch_size: int, seed: int = 0, shard_index: int = 0,
                  shard_count: int = 1, num_epochs: int | None = None, shuffle: bool = True,
                  prefetch: int = 2) -> DataPipeline:
    """Packed batches of this process's shard of `source`.

    Args:
      source: random-access documents (strings); see `mdn_jax.data.sources`.
      tokenizer: see `mdn_jax.data.tokenizers`.
      seq_len: T; batch_size: rows per batch of *this process* (global batch / process count).
      seed: shuffling seed (each epoch gets its own permutation).
      shard_index, shard_count: documents i with i % shard_count == shard_index belong to this process.
      num_epochs: None repeats forever (training); a finite stream ends with a padded partial batch.
      prefetch: batches prepared ahead in a background thread (0 = none).
    """
    if len(source) < shard_count:
        raise UserError(f"{len(source)} documents cannot be shared among {shard_count} processes")
    ds = grain.MapDataset.source(source)[shard_index::shard_count]
    if shuffle:
        ds = ds.shuffle(seed)
    ds = ds.repeat(num_epochs).map(_encode_fn(tokenizer))
    it = PackIterDataset(ds, seq_len, tokenizer.pad_id).batch(batch_size, drop_remainder=num_epochs is None)
    if prefetch > 0:
        it = grain.experimental.ThreadPrefetchIterDataset(it, prefetch_buffer_size=prefetch)
    return DataPipeline(it)
