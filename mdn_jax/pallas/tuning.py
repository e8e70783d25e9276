"""Block sizes of the Pallas kernels per shape (a small table; measured on H100, see experiments/results/)."""

from __future__ import annotations

from typing import NamedTuple


class BlockConfig(NamedTuple):
    block_v: int  # V columns of the state per program
    num_warps: int


def block_config(K: int, V: int, chunk_size: int) -> BlockConfig:
    """Block sizes for the sequential pass: S and M ([K, block_v] float32 each) live in registers."""
    del chunk_size
    block_v = min(V, 32 if K <= 128 else 16)
    return BlockConfig(block_v=block_v, num_warps=4)
