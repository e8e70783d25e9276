"""Block sizes of the Pallas kernels per shape (a small table; measured on H100, see experiments/results/).

`MDN_BLOCK_V` / `MDN_NUM_WARPS` in the environment override the table (for tuning runs).
"""

from __future__ import annotations

import os
from typing import NamedTuple


class BlockConfig(NamedTuple):
    block_v: int  # V columns of the state per program
    num_warps: int


def block_config(K: int, V: int, chunk_size: int) -> BlockConfig:
    """Block sizes for the sequential pass: S and M ([K, block_v] float32 each) live in registers."""
    del chunk_size
    block_v = int(os.environ.get("MDN_BLOCK_V", 32 if K <= 128 else 16))
    num_warps = int(os.environ.get("MDN_NUM_WARPS", 4))
    return BlockConfig(block_v=min(block_v, V), num_warps=num_warps)
