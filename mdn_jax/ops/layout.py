"""Chunk layout: padding to whole chunks, packed sequences (cu_seqlens) and segment ids.

Every implementation of the operator core runs on a time axis that is a whole number of chunks.
Sequence starts and ends are given per chunk:

* ``chunk_init[b, c] = n >= 0``: chunk c of row b starts from initial state n (-1: carry on).
* ``chunk_final[b, c] = n < N``: the state at the end of chunk c of row b is final state n (N: none).

Padded time steps are exact identities of the recurrence: zero q/k/p/v, log gates 0, beta 0
(spec 3.6). Packed sequences given by ``cu_seqlens`` are re-laid so that each one starts on a chunk
boundary; segment ids (several documents per row, as packed training data) reset the state inside a
chunk through the gates instead (``segment_reset``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class ChunkLayout(NamedTuple):
    """Where the packed tokens of the op's inputs live in the chunk-padded time axis."""

    padded_len: int  # Tp, a multiple of the chunk size
    positions: jax.Array | None  # [T] int32 destination of each token (None: identity, [0, T))
    chunk_init: jax.Array  # [B, NC] int32
    chunk_final: jax.Array  # [B, NC] int32
    num_states: int  # N


def dense_layout(B: int, T: int, chunk_size: int) -> ChunkLayout:
    """One sequence per row: states start at chunk 0 and end at the last chunk."""
    nc = max(1, -(-T // chunk_size))
    rows = jnp.arange(B, dtype=jnp.int32)[:, None]
    cols = jnp.arange(nc, dtype=jnp.int32)[None, :]
    init = jnp.where(cols == 0, rows, -1)
    final = jnp.where(cols == nc - 1, rows, B)
    return ChunkLayout(nc * chunk_size, None, init, final, B)


def packed_layout(cu_seqlens, T: int, chunk_size: int) -> ChunkLayout:
    """Layout of N packed sequences (batch 1): sequence n starts on its own chunk boundary."""
    C = chunk_size
    cu = jnp.asarray(cu_seqlens, jnp.int32)
    n_seq = cu.shape[0] - 1
    lengths = cu[1:] - cu[:-1]
    chunks = (lengths + C - 1) // C
    first_chunk = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(chunks)])  # [N + 1]
    nc = -(-T // C) + n_seq  # static upper bound on sum(ceil(len / C))
    t = jnp.arange(T, dtype=jnp.int32)
    seq = jnp.searchsorted(cu, t, side="right").astype(jnp.int32) - 1
    positions = first_chunk[seq] * C + (t - cu[seq])
    c = jnp.arange(nc, dtype=jnp.int32)
    seq_of_chunk = jnp.searchsorted(first_chunk, c, side="right").astype(jnp.int32) - 1
    in_range = seq_of_chunk < n_seq
    starts = in_range & (c == first_chunk[jnp.clip(seq_of_chunk, 0, n_seq)])
    ends = in_range & (c == first_chunk[jnp.clip(seq_of_chunk + 1, 0, n_seq)] - 1)
    init = jnp.where(starts, seq_of_chunk, -1)[None]
    final = jnp.where(ends, seq_of_chunk, n_seq)[None]
    return ChunkLayout(nc * C, positions, init, final, n_seq)


def to_chunks(x: jax.Array, layout: ChunkLayout, fill=0) -> jax.Array:
    """[B, T, ...] -> [B, Tp, ...], tokens placed by the layout, padding set to ``fill``."""
    B, T = x.shape[:2]
    pad = layout.padded_len
    if layout.positions is None:
        widths = [(0, 0), (0, pad - T)] + [(0, 0)] * (x.ndim - 2)
        return jnp.pad(x, widths, constant_values=fill)
    out = jnp.full((B, pad) + x.shape[2:], fill, x.dtype)
    return out.at[:, layout.positions].set(x)


def from_chunks(x: jax.Array, layout: ChunkLayout, T: int) -> jax.Array:
    """Inverse of ``to_chunks``: [B, Tp, ...] -> [B, T, ...]."""
    if layout.positions is None:
        return x[:, :T]
    return x[:, layout.positions]


def segment_reset(segment_ids: jax.Array) -> jax.Array:
    """[B, T] bool: True where a token starts a new segment after another one in the same row."""
    prev = jnp.concatenate([segment_ids[:, :1], segment_ids[:, :-1]], axis=1)
    return segment_ids != prev


def cu_seqlens_from_segment_ids(segment_ids) -> jax.Array:
    """cu_seqlens [N + 1] of a single row of segment ids [T] or [1, T] (host-side: N is data-dependent)."""
    import numpy as np

    s = np.asarray(segment_ids).reshape(-1)
    starts = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]]))
    return jnp.asarray(np.concatenate([starts, [s.size]]), jnp.int32)


def segment_ids_from_cu_seqlens(cu_seqlens, T: int) -> jax.Array:
    """Segment ids [1, T] (0, 1, ...) of packed sequences given by cu_seqlens [N + 1]."""
    t = jnp.arange(T, dtype=jnp.int32)
    return (jnp.searchsorted(jnp.asarray(cu_seqlens, jnp.int32), t, side="right") - 1)[None].astype(jnp.int32)
