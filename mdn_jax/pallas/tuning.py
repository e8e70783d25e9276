"""Block sizes of the Pallas kernels per shape (a small table; measured on H100, see experiments/results/).

Environment overrides (for tuning runs): `MDN_BLOCK_V` (sequential pass under differentiation),
`MDN_BLOCK_V_INFER` (sequential pass without differentiation), `MDN_NUM_WARPS` (sequential pass),
`MDN_LOCAL_WARPS` (chunk-local kernels); `MDN_LOCAL_KERNEL=0` computes the chunk-local stage in XLA instead
of the Pallas kernels (for side-by-side measurement).
"""

from __future__ import annotations

import os
from typing import NamedTuple


class BlockConfig(NamedTuple):
    block_v: int  # V columns of the state per program of the sequential pass, under differentiation
    block_v_infer: int  # the same without differentiation (no per-chunk states written)
    num_warps: int  # sequential pass
    local_warps: int  # chunk-local kernels


def block_config(K: int, V: int, chunk_size: int) -> BlockConfig:
    """Block sizes for the sequential pass: S and M ([K, block_v] float32 each) live in registers.

    H100, S400 (K=128, V=256): block_v 32 is fastest forward+backward, 64 fastest forward alone
    (results h100_2026-11-23_c91c7ff and _1d83036).
    """
    del chunk_size
    env = lambda name, default: int(os.environ.get(name, default))  # noqa: E731
    block_v = env("MDN_BLOCK_V", 32 if K <= 128 else 16)
    block_v_infer = env("MDN_BLOCK_V_INFER", 64 if K <= 128 else 16)
    return BlockConfig(block_v=min(block_v, V), block_v_infer=min(block_v_infer, V),
                       num_warps=env("MDN_NUM_WARPS", 4), local_warps=env("MDN_LOCAL_WARPS", 4))


def use_local_kernel() -> bool:
    """Whether the non-differentiated chunk-local stage runs as Pallas kernels (env MDN_LOCAL_KERNEL, default 1)."""
    return os.environ.get("MDN_LOCAL_KERNEL", "1") != "0"
