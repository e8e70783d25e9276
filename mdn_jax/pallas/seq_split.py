"""The forward without differentiation split along the sequence, for few long rows (one long prompt).

The sequential pass runs one program per (row, value block) over all chunks of a row, so at B * HV = 6 rows of
T = 32768 it has too few programs for the GPU and 512 dependent chunk steps each. The recurrence is affine in the
state x = [S; M] ([2K, V]) with the value columns independent of each other: over a segment of the sequence,
x_end = Phi x_start + x_local and O = O_local + Psi x_start, where Phi [2K, 2K] and Psi [Tg, 2K] depend only on
q, k and the gates. So the rows are cut into G segments of whole chunks (ragged by at most one chunk where G does
not divide them), and one Mosaic GPU pass (`mosaic_pass.split_pass_mosaic`) runs every segment over 2K + V state
columns: the first 2K start from the identity ([I, 0] for S, [0, I] for M) with zero values, giving Phi (their
final states) and Psi (their outputs, head-major); the last V from a zero state, giving x_local and O_local. From
a zero start state (no initial state given) the first segment's identity columns are not run: its start is zero,
so x_1 = x_local_0 and its outputs are final. A recurrence of [2K, 2K] x [2K, V] products gives each later
segment's true x_start, and one kernel adds Psi x_start to its outputs (`start_response`). That is (2K + V) / V
times the pass's arithmetic (2x at K = 128, V = 256) in about G times as many programs of G times fewer steps;
`tuning.split_cost` picks G by waves of one program per SM (a short segment's missing step is an identity
chunk). H100, S400 at B=1, T=32768, zero start: forward 0.967 ms with 3 segments (two consumers of block_v 32 at
two stages) against 1.241 with 4, and 1.498 with 4 at the former block_v 64, one stage
(experiments/results/h100_2026-12-07_d0761f7).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

from mdn_jax.pallas.chunk_local import chunk_local
from mdn_jax.pallas.mosaic_pass import split_pass_mosaic
from mdn_jax.pallas.start_response import add_start_response, add_start_response_xla
from mdn_jax.pallas.tuning import BlockConfig


class SplitConfig(NamedTuple):
    """How `split_forward` runs: segments per row, the configuration of its pass over 2K + V columns (its
    `mosaic` field set: the split runs only with the Mosaic GPU pass), whether O + Psi x_start is the kernel
    of `start_response` (else XLA's products and adds; `tuning.split_add_kernel`) and whether the start state is
    known to be zero (the first segment's identity columns are then not run)."""

    segments: int
    cfg: BlockConfig
    add_kernel: bool = False
    zero_start: bool = False


def split_forward(qb, kt, p, v, log_alpha, log_mu, beta, s0, m0, *, chunk, op_dtype, interpret, split: SplitConfig):
    """O [B, Tp, HV, V] and the final (S, M) [B, HV, K, V] for dense rows (one sequence per row, N = B), as
    the unsplit pass gives them. qb, kt, p: [B, Tp, HV, K], v: [B, Tp, HV, V] (operand dtype); gates
    [B, Tp, HV]; s0, m0: [B, HV, K, V] float32 (zero where split.zero_start: not read); split.segments <= the
    chunks of a row."""
    B, Tp, HV, K = kt.shape
    V = v.shape[-1]
    G, cfg = split.segments, split.cfg
    local = chunk_local(qb, kt, p, log_alpha, log_mu, beta, chunk=chunk, op_dtype=op_dtype, interpret=interpret,
                        num_warps=cfg.local_warps, solve_warps=cfg.solve_warps)
    acc = s0.dtype
    eye, zk, zv = jnp.eye(K, dtype=acc), jnp.zeros((K, K), acc), jnp.zeros((K, V), acc)
    o, fs, fm, psi = split_pass_mosaic(local, qb, kt, p, v, jnp.concatenate([eye, zk, zv], axis=1),
                                       jnp.concatenate([zk, eye, zv], axis=1), segments=G,
                                       skip_first=split.zero_start, interpret=interpret, **cfg.mosaic._asdict())
    fs, fm = (x.reshape(B, G, HV, K, 2 * K + V) for x in (fs, fm))
    starts, x = segment_starts(fs, fm, None if split.zero_start else jnp.concatenate([s0, m0], axis=-2))
    first = G - starts.shape[1]
    if starts.shape[1]:
        starts = starts.astype(o.dtype).reshape(B * (G - first) * HV, 2 * K, V)  # operand dtype, as the pass reads
        add = add_start_response if split.add_kernel else add_start_response_xla
        kw = dict(interpret=interpret) if split.add_kernel else {}
        o = add(o, psi, starts, segments=G, first_segment=first, chunk=chunk, **kw)
    return o, x[..., :K, :], x[..., K:, :]


def segment_starts(fs, fm, x0):
    """Each segment's start state and the last one's end state from x_end = Phi x_start + x_local, [S; M] = x:
    dependent [2K, 2K] x [2K, V] products, one per segment after the first (0.026 ms for four on an H200). An
    associative scan over the segments' affine maps would shorten the chain to ~2 log2 G steps but multiply the
    float32 arithmetic ~3x (the maps' [2K, 2K + V] products at every level): not worth it at the few segments
    the split uses.

    fs, fm: [B, G, HV, K, 2K + V], the S and M rows of [Phi | x_local] per segment (float32); x0: [B, HV, 2K, V],
    or None for a zero start (segment 0's Phi is then not read). Returns starts [B, G', HV, 2K, V] of segments
    G - G' .. G - 1 (G' = G, or G - 1 without x0: segment 0's start is zero) and x_end [B, HV, 2K, V]."""
    n = 2 * fs.shape[-2]
    local_end = lambda g: jnp.concatenate([fs[:, g, ..., n:], fm[:, g, ..., n:]], axis=-2)  # noqa: E731
    x, first = (local_end(0), 1) if x0 is None else (x0, 0)
    starts = []
    for g in range(first, fs.shape[1]):
        starts.append(x)
        x = jnp.concatenate([jnp.einsum("bhij,bhjv->bhiv", f[:, g, ..., :n], x, precision=lax.Precision.HIGHEST)
                             + f[:, g, ..., n:] for f in (fs, fm)], axis=-2)
    if not starts:
        return jnp.zeros(x.shape[:1] + (0,) + x.shape[1:], x.dtype), x
    return jnp.stack(starts, axis=1), x
