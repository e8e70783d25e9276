"""The forward without differentiation split along the sequence, for few long rows (one long prompt).

The sequential pass runs one program per (row, value block) over all chunks of a row, so at B * HV = 6 rows of
T = 32768 it has too few programs for the GPU and 512 dependent chunk steps each. The recurrence is affine in the
state x = [S; M] ([2K, V]) with the value columns independent of each other: over a segment of the sequence,
x_end = Phi x_start + x_local and O = O_local + Psi x_start, where Phi [2K, 2K] and Psi [Tg, 2K] depend only on
q, k and the gates. So the rows are cut into G segments of Tg = T / G, and one Mosaic GPU pass over the
B * G * HV segment rows runs 2K + V state columns: the first 2K start from the identity ([I, 0] for S, [0, I]
for M) with zero values, giving Phi (their final states) and Psi (their outputs, head-major); the last V from a
zero state, giving x_local and O_local. A G-step recurrence of [2K, 2K] x [2K, V] products gives each segment's
true x_start, and one batched product adds Psi x_start to the outputs. That is (2K + V) / V times the pass's
arithmetic (2x at K = 128, V = 256) in G times as many programs of G times fewer steps. H200, S400 at B=1,
T=32768: forward 1.476 ms with 4 segments against 1.683 unsplit (experiments/results/h200_2026-12-04_362b8f1).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

from mdn_jax.pallas.chunk_local import chunk_local
from mdn_jax.pallas.mosaic_pass import pass_forward_mosaic
from mdn_jax.pallas.start_response import add_start_response, add_start_response_xla
from mdn_jax.pallas.tuning import BlockConfig


class SplitConfig(NamedTuple):
    """How `split_forward` runs: segments per row, the configuration of its pass over 2K + V columns (its
    `mosaic` field set: the split runs only with the Mosaic GPU pass) and whether O + Psi x_start is the kernel
    of `start_response` (else XLA's product and add; `tuning.split_add_kernel`)."""

    segments: int
    cfg: BlockConfig
    add_kernel: bool = False


def split_forward(qb, kt, p, v, log_alpha, log_mu, beta, s0, m0, *, chunk, op_dtype, interpret, split: SplitConfig):
    """O [B, Tp, HV, V] and the final (S, M) [B, HV, K, V] for dense rows (one sequence per row, N = B), as
    the unsplit pass gives them. qb, kt, p: [B, Tp, HV, K], v: [B, Tp, HV, V] (operand dtype); gates
    [B, Tp, HV]; s0, m0: [B, HV, K, V] float32; split.segments divides Tp / chunk."""
    B, Tp, HV, K = kt.shape
    V = v.shape[-1]
    G, cfg = split.segments, split.cfg
    Tg = Tp // G
    rows = lambda x: x.reshape((B * G, Tg) + x.shape[2:])  # noqa: E731  (segment g of row b is row b * G + g)
    qb, kt, p, v, log_alpha, log_mu, beta = (rows(x) for x in (qb, kt, p, v, log_alpha, log_mu, beta))
    local = chunk_local(qb, kt, p, log_alpha, log_mu, beta, chunk=chunk, op_dtype=op_dtype, interpret=interpret,
                        num_warps=cfg.local_warps, solve_warps=cfg.solve_warps)
    acc = s0.dtype
    eye, zk, zv = jnp.eye(K, dtype=acc), jnp.zeros((K, K), acc), jnp.zeros((K, V), acc)
    basis = lambda *blocks: jnp.broadcast_to(jnp.concatenate(blocks, axis=1), (B * G, HV, K, 2 * K + V))  # noqa: E731
    o, fs, fm, psi = pass_forward_mosaic(local, qb, kt, p, v, basis(eye, zk, zv), basis(zk, eye, zv),
                                         identity_cols=2 * K, interpret=interpret, **cfg.mosaic._asdict())
    ends = jnp.concatenate([fs, fm], axis=-2).reshape(B, G, HV, 2 * K, 2 * K + V)  # [S; M] at each segment's end
    starts, x = segment_starts(ends, jnp.concatenate([s0, m0], axis=-2))
    starts = starts.astype(o.dtype)  # operand dtype, as the pass reads S, M
    o, starts = o.reshape(B * G, Tg, HV, V), starts.reshape(B * G * HV, 2 * K, V)
    if split.add_kernel:
        o = add_start_response(o, psi, starts, interpret=interpret)
    else:
        o = add_start_response_xla(o, psi, starts)
    return o.reshape(B, Tp, HV, V), x[..., :K, :], x[..., K:, :]


def segment_starts(ends, x0):
    """Each segment's start state and the last one's end state from x_end = Phi x_start + x_local: G dependent
    [2K, 2K] x [2K, V] products (0.026 ms at G = 4 on an H200). An associative scan over the segments' affine maps
    would shorten the chain to ~2 log2 G steps but multiply the float32 arithmetic ~3x (the maps' [2K, 2K + V]
    products at every level): not worth it at the few segments the split uses.

    ends: [B, G, HV, 2K, 2K + V] = [Phi | x_local] per segment, x0: [B, HV, 2K, V] (float32). Returns starts
    [B, G, HV, 2K, V] and x_end [B, HV, 2K, V]."""
    n = x0.shape[-2]
    x, starts = x0, []
    for g in range(ends.shape[1]):
        starts.append(x)
        x = jnp.einsum("bhij,bhjv->bhiv", ends[:, g, ..., :n], x, precision=lax.Precision.HIGHEST) + ends[:, g, ..., n:]
    return jnp.stack(starts, axis=1), x
