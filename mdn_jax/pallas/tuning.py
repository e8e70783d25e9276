"""Block sizes of the Pallas kernels per shape (a small table; measured on H100 and H200, see experiments/results/).

Environment overrides (for tuning runs): `MDN_BLOCK_V` (reverse sweep), `MDN_BLOCK_V_SAVE` (forward pass under
differentiation, which also writes the chunk states), `MDN_BLOCK_V_INFER` (forward pass without
differentiation), `MDN_NUM_WARPS` (sequential passes), `MDN_LOCAL_WARPS` (chunk-local coefficients),
`MDN_SOLVE_WARPS` (the solve), `MDN_GRADS_BLOCK_K`, `MDN_GRADS_BLOCK_V`, `MDN_GRADS_WARPS` (the cotangent kernel
of `chunk_grads`), `MDN_LOCAL_VJP_BLOCK_K`, `MDN_LOCAL_VJP_BLOCK_V`, `MDN_LOCAL_VJP_WARPS` (the kernel of
`chunk_local_bwd`), `MDN_STAGES_<FAMILY>` (Triton pipelining stages, see `num_stages`);
`MDN_GRADS_KERNEL` picks the pass cotangents' implementation (`grads_kernel`: mosaic, triton or xla),
`MDN_LOCAL_VJP_KERNEL=0` the chunk-local VJP as XLA products instead of the kernel of `chunk_local_bwd` and
`MDN_GATE_VJP_KERNEL=0` the gate-coefficient VJP by XLA's autodiff instead of the kernel of `gate_vjp` (for
side-by-side measurement); `MDN_MOSAIC` picks the sequential passes' language and `MDN_MOSAIC_BLOCK_V`,
`MDN_MOSAIC_STAGES`, `MDN_MOSAIC_CONSUMERS` the Mosaic passes' configuration (see `mosaic_config`);
`MDN_PREP_FWD_KERNEL`, `MDN_PREP_KERNEL`, `MDN_PREP_BLOCK_ROWS`, `MDN_PREP_WARPS` the q, k preprocessing's kernels
(`prep_config`);
`MDN_MOSAIC_ACC=fresh` the pass-cotangent kernel's products and `MDN_MOSAIC_PASS_ACC=fresh` the Mosaic passes'
state updates in fresh accumulators (`mosaic_common.in_place`);
`MDN_SEQ_SPLIT` the forward's sequence split for few long rows (`seq_split_segments`) and `MDN_SPLIT_ADD_KERNEL` its
last step's kernel (`split_add_kernel`).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import jax.numpy as jnp


class MosaicConfig(NamedTuple):
    """The Mosaic GPU sequential passes of `mdn_jax.pallas.mosaic_pass` (one configuration for all three)."""

    block_v: int  # V columns of the state per compute warpgroup
    stages: int  # chunks in flight
    consumers: int  # compute warpgroups per program


class BlockConfig(NamedTuple):
    block_v: int  # V columns of the state per program of the reverse sweep
    block_v_save: int  # the same for the forward pass under differentiation (writes the chunk states)
    block_v_infer: int  # the same for the forward pass without differentiation (no per-chunk states written)
    num_warps: int  # sequential passes
    local_warps: int  # the chunk-local coefficient kernel
    solve_warps: int  # the chunk-local triangular solve (16 x 16 blocks; `block_config`)
    mosaic: MosaicConfig | None = None  # the passes under differentiation in Mosaic GPU, not Triton (`mosaic_config`)
    mosaic_infer: MosaicConfig | None = None  # the same for the forward pass without differentiation


class PrepConfig(NamedTuple):
    """The kernels of the op's q, k preprocessing (`mdn_jax.pallas.prep`)."""

    use_fwd_kernel: bool  # the forward as a Pallas kernel (else XLA's fusions of the same map)
    use_kernel: bool  # the backward as a Pallas kernel (else the same VJP in jnp)
    block_rows: int  # rows of [K] per program
    num_warps: int


def prep_config() -> PrepConfig:
    """Env MDN_PREP_FWD_KERNEL (1; 0: XLA's forward), MDN_PREP_KERNEL (1; 0: the jnp VJP), MDN_PREP_BLOCK_ROWS
    (32, both kernels), MDN_PREP_WARPS (4, both kernels)."""
    return PrepConfig(use_fwd_kernel=_env("MDN_PREP_FWD_KERNEL", 1) != 0, use_kernel=_env("MDN_PREP_KERNEL", 1) != 0,
                      block_rows=_env("MDN_PREP_BLOCK_ROWS", 32), num_warps=_env("MDN_PREP_WARPS", 4))


class KernelBlocks(NamedTuple):
    """Blocks of a backward Triton kernel that loops over K and V."""

    block_k: int  # K columns per block
    block_v: int  # V columns per loop step
    num_warps: int


def _env(name: str, default) -> int:
    return int(os.environ.get(name, default))


_MIN_BLOCK_V = 16  # the Triton passes' smallest block of V columns (`block_config`)
_FEW_PROGRAMS = 128  # about the SM count of an H100/H200 (132): fewer programs than this leave SMs idle


def block_config(K: int, V: int, chunk_size: int, rows: int = 1 << 20) -> BlockConfig:
    """Block sizes for the sequential pass: S and M ([K, block_v] float32 each) live in registers.

    rows: B * HV, the independent sequences; a pass has rows * V / block_v programs.
    S400 (K=128, V=256, 48 rows): block_v 32 is fastest for the reverse sweep and for the forward pass that writes
    the chunk states (H200, d5e7720: fwd+bwd 5.68 ms with 32, 5.87 with 64), 64 for the forward pass alone
    (H100, h100_2026-11-23_c91c7ff and _1d83036; H200 405c347: 1.24 ms vs 1.35 with 32). With fewer than
    `_FEW_PROGRAMS` programs each is halved (S400 at B=1, T=32768, 6 rows, H200 405c347: forward 2.23 ms with 32
    vs 4.41 with 64, forward+backward 5.87 with 16 vs 6.36 with 32; 1003bca: forward 2.25 with the rule's 16, 2.24
    with 32). The chunk-local triangular solve runs one warp per program: its [16, 16] blocks' row reductions
    stay within the warp (H200 e30beb5, S400: forward 0.852 ms vs 0.941 with 4 warps and 0.897 with 2,
    forward+backward 3.308 vs 3.385); the coefficient kernel keeps 4 (2: forward 1.304 ms).
    """
    del chunk_size

    def fill(block):  # halve the block (down to _MIN_BLOCK_V) while the pass would have too few programs
        while block > _MIN_BLOCK_V and rows * V // block < _FEW_PROGRAMS:
            block //= 2
        return block

    block_v = _env("MDN_BLOCK_V", fill(32 if K <= 128 else 16))
    block_v_save = _env("MDN_BLOCK_V_SAVE", block_v)
    block_v_infer = _env("MDN_BLOCK_V_INFER", fill(64 if K <= 128 else 16))
    return BlockConfig(block_v=min(block_v, V), block_v_save=min(block_v_save, V),
                       block_v_infer=min(block_v_infer, V), num_warps=_env("MDN_NUM_WARPS", 4),
                       local_warps=_env("MDN_LOCAL_WARPS", 4), solve_warps=_env("MDN_SOLVE_WARPS", 1))


# K <= 128: two chunks in flight (at block_v 64 a chunk's tiles and the scratch fill shared memory at one stage)
_MOSAIC = MosaicConfig(block_v=32, stages=2, consumers=1)  # the saving pass and the sweep; few-row inference
# without differentiation: the split's pass over 2K + V columns, and the unsplit pass where it has enough programs
_MOSAIC_INFER = MosaicConfig(block_v=32, stages=2, consumers=2)
_MOSAIC_WIDE_K = MosaicConfig(block_v=32, stages=1, consumers=2)  # K > 128: what fits shared memory with two consumers


def has_wgmma() -> bool:
    """Whether the default device is a Hopper GPU (compute capability 9.x), the only one with the wgmma
    instructions of the Mosaic GPU kernels (Blackwell's tensor-core instructions are others)."""
    capability = getattr(jax.devices()[0], "compute_capability", None)
    return capability is not None and str(capability).split(".")[0] == "9"


def _mosaic_fields(K: int, split: bool = False, infer_columns: int = 0) -> MosaicConfig:
    """infer_columns: rows * V of the unsplit pass without differentiation (0: under differentiation)."""
    wide_infer = infer_columns // (_MOSAIC_INFER.consumers * _MOSAIC_INFER.block_v) >= _FEW_PROGRAMS
    base = _MOSAIC_WIDE_K if K > 128 else _MOSAIC_INFER if split or wide_infer else _MOSAIC
    return MosaicConfig(block_v=_env("MDN_MOSAIC_BLOCK_V", base.block_v), stages=_env("MDN_MOSAIC_STAGES", base.stages),
                        consumers=_env("MDN_MOSAIC_CONSUMERS", base.consumers))


def mosaic_config(K: int, V: int, rows: int, op_dtype, *, dense: bool, interpret: bool,
                  split: bool = False, infer: bool = False) -> MosaicConfig | None:
    """The Mosaic GPU passes' configuration where they should replace the Triton passes (None: the Triton ones);
    the caller also checks the kernels' shape limits (`mosaic_pass.supported`).

    Env MDN_MOSAIC: 'auto' (default), '0' (never), '1' (for every dense layout of 16-bit operands, and in interpret
    mode of any: for tests). 'auto' takes them on Hopper GPUs (`has_wgmma`) for dense rows (no cu_seqlens) of 16-bit
    operands at K = 128 (`_MOSAIC`: block_v 32, two stages, one consumer warpgroup; H100, interleaved,
    experiments/results/h100_2026-12-07_d0761f7: S400 forward+backward 3.096 ms against 3.535 at the former block_v
    64, one stage, two consumers, and 3.137 with two consumers at block_v 32; S400 at B=1, T=32768 (6 rows, 48
    programs) 4.450 against 5.124 with the Triton passes, which split V finer there) and at K = 256 with enough
    programs, where two consumers fit shared memory at block_v 32 and one stage (`_MOSAIC_WIDE_K`,
    `mosaic_pass.smem_bytes`): H100, 1.3B (B=4, H=6, K=256, V=512), op forward+backward 5.26 ms vs 6.90 with the
    Triton passes (h100_2026-12-05_020ff85); with few programs (rows * V / block_v < `_FEW_PROGRAMS`) K = 256
    keeps the Triton passes. Other K keep the Triton passes (not measured). split: the sequence split's pass
    (`_MOSAIC_INFER`: two consumers of block_v 32 at two stages; `seq_split_segments` weighed its programs, and
    it has no Triton form). infer: the forward pass without differentiation, which at K = 128 takes `_MOSAIC_INFER`
    where its rows * V / 64 programs are at least `_FEW_PROGRAMS` (H100, 8f0f753, interleaved: S400 forward 0.704
    ms against 0.785 with one consumer, experiments/results/h100_2026-12-07_8f0f753; under differentiation one
    consumer won, above; few rows, as S400 at B=4, keep one: not measured with two). Env MDN_MOSAIC_BLOCK_V,
    MDN_MOSAIC_STAGES, MDN_MOSAIC_CONSUMERS override the configuration's fields, of every pass alike (for tuning
    runs; a configuration outside `mosaic_pass.supported` at the op's shapes leaves the Triton passes, as every
    shape outside it does).
    """
    mode = os.environ.get("MDN_MOSAIC", "auto")
    if mode not in ("auto", "0", "1"):
        raise ValueError(f"MDN_MOSAIC must be 'auto', '0' or '1', got {mode!r}")
    cfg = _mosaic_fields(K, split, rows * V if infer else 0)
    sixteen_bit = jnp.dtype(op_dtype).itemsize == 2  # wgmma operands (float32 only in interpret mode)
    if mode == "0" or not dense or not (sixteen_bit or interpret):
        return None
    if mode == "1":
        return cfg
    measured = K == 128 or (K == 256 and (split or rows * V // cfg.block_v >= _FEW_PROGRAMS))
    return cfg if measured and not interpret and has_wgmma() else None


def seq_split_segments(rows: int, num_chunks: int, K: int, V: int, *, dense: bool, zero_start: bool = False,
                       sms: int | None = None) -> int:
    """Segments per row of the forward without differentiation (`mdn_jax.pallas.seq_split`; 1: no split).

    Env MDN_SEQ_SPLIT: 'auto' (default) or a number of segments (1: never split; at most the chunks of a row).
    The split runs only where its pass would be the Mosaic GPU one (`mosaic_config` for the G times as many rows
    of 2K + V columns; in interpret mode with MDN_MOSAIC=1). 'auto' splits dense rows at K <= 128 (K = 256 not
    measured) only where the pass alone has too few programs even at the Triton passes' smallest block (rows * V /
    `_MIN_BLOCK_V` < `_FEW_PROGRAMS`), into the G of least modelled time (`split_cost`; ragged segments, where G
    does not divide the chunks, run their missing step as an identity chunk at no extra cost), with segments of
    at least `_SPLIT_MIN_CHUNKS` chunks. zero_start: no initial state (the first segment's identity columns are
    not run); sms: the GPU's multiprocessors (default: the device's, else 132). Measured, S400 at B=1, T=32768 (6
    rows, 512 chunks), forward, zero start, H100, interleaved, the split's pass at `_MOSAIC_INFER`
    (experiments/results/h100_2026-12-07_d0761f7): 0.967-0.971 ms with 3 segments (the model's pick: 120
    programs, one wave of 171 steps), 1.046 with 6, 1.177 with 2, 1.241 with 4; at the former block_v 64, one
    stage: 1.259 with 6 (ragged), 1.498 with 4. S400 at B=4 (24 rows, 64 chunks) lost with 2 (H200: 0.877 vs
    0.567).
    """
    mode = os.environ.get("MDN_SEQ_SPLIT", "auto")
    if mode != "auto":
        segments = int(mode)
        if not 1 <= segments <= num_chunks:
            raise ValueError(f"MDN_SEQ_SPLIT={segments} must be between 1 and the {num_chunks} chunks of a row")
        return segments if dense else 1
    if not dense or K > 128 or rows * V // _MIN_BLOCK_V >= _FEW_PROGRAMS:
        return 1
    sms = sms or sm_count()
    fields = _mosaic_fields(K, split=True)
    width = fields.consumers * fields.block_v  # one program's state columns in the split's pass
    candidates = range(2, num_chunks // _SPLIT_MIN_CHUNKS + 1)
    costs = {G: split_cost(G, rows, num_chunks, K, V, zero_start=zero_start, width=width, sms=sms)
             for G in candidates}
    return min(costs, key=lambda G: (costs[G], G)) if costs else 1


_SPLIT_MIN_CHUNKS = 16
_SEGMENT_COST = 3  # chunk steps of XLA work per segment (the recurrence's float32 product, slices, the starts)


def split_cost(segments: int, rows: int, num_chunks: int, K: int, V: int, *, zero_start: bool, width: int,
               sms: int) -> int:
    """The split's modelled time in chunk steps of its pass: one program per SM (its shared memory), so
    ceil(programs / sms) waves of ceil(NC / G) steps, plus `_SEGMENT_COST` per segment. Programs per row: 2K /
    width identity and V / width value programs per segment, no identity ones in the first segment from a zero
    start (`split_programs`). H100, S400 at B=1, T=32768, zero start, width 64 (d0761f7): modelled 180, 190, 262
    and 268 steps at 3, 6, 2 and 4 segments, measured in that order (0.967, 1.046, 1.177, 1.241 ms forward);
    at ff2ab94 (width 128, one stage) 96 programs x 128 steps at 4 segments, 384 x 32 (3 waves) at 16: the pass
    0.906 and 0.720 ms, the XLA work around it 0.19 ms more at 16."""
    programs = rows * split_programs(segments, V, 2 * K, width, zero_start)
    return -(-programs // sms) * -(-num_chunks // segments) + _SEGMENT_COST * segments


def split_programs(segments: int, V: int, identity_cols: int, width: int, skip_first: bool) -> int:
    """Programs per (row, head) of `mosaic_pass.split_pass_mosaic` (width: one program's state columns)."""
    return segments * V // width + (segments - int(skip_first)) * identity_cols // width


def sm_count() -> int:
    """Multiprocessors of the first device (132 where it does not say: an H100/H200)."""
    return getattr(jax.devices()[0], "core_count", None) or 132


def split_add_kernel() -> bool:
    """Whether the sequence split adds Psi x_start to its outputs with the kernel of `start_response` (env
    MDN_SPLIT_ADD_KERNEL=1, the default) or with XLA's product and add (0). H100, S400 at B=1, T=32768, forward,
    interleaved: 1.422 ms vs 1.524 (experiments/results/h100_2026-12-05_020ff85)."""
    return _env("MDN_SPLIT_ADD_KERNEL", 1) != 0


def grads_config() -> KernelBlocks:
    """Blocks of the Triton pass-cotangent kernel: per program [C, block_k] float32 accumulators (six) and a [C, C]
    one (which implementation runs: `grads_kernel`)."""
    return KernelBlocks(block_k=_env("MDN_GRADS_BLOCK_K", 64), block_v=_env("MDN_GRADS_BLOCK_V", 64),
                        num_warps=_env("MDN_GRADS_WARPS", 8))


_GRADS_KERNELS = {"auto": "auto", "mosaic": "mosaic", "triton": "triton", "1": "triton", "xla": "xla", "0": "xla"}


def grads_kernel_env() -> str:
    """Env MDN_GRADS_KERNEL: 'auto' (default), 'mosaic', 'triton' (or '1'), 'xla' (or '0')."""
    mode = os.environ.get("MDN_GRADS_KERNEL", "auto")
    if mode not in _GRADS_KERNELS:
        raise ValueError(f"MDN_GRADS_KERNEL must be one of {sorted(_GRADS_KERNELS)}, got {mode!r}")
    return _GRADS_KERNELS[mode]


def grads_kernel(supported: bool, op_dtype, *, interpret: bool) -> str:
    """Which implementation computes the pass cotangents: 'mosaic' (`mosaic_grads`, where its shape limits hold:
    `supported`), 'triton' (`chunk_grads.pass_cotangents`) or 'xla' (`chunk_grads.pass_cotangents_xla`).

    'auto' takes the Mosaic kernel on Hopper GPUs (`has_wgmma`) for 16-bit operands: H200 (h200_2026-12-02_2f92d60)
    the kernel alone S400 0.52 ms vs 0.65 (Triton), 1.3B 0.84 vs 1.09, T=32768 0.52 vs 0.65; the op's
    forward+backward S400 3.52 vs 3.64, 1.3B 7.11 vs 7.36, T=32768 5.36 vs 5.49. 'mosaic' also in interpret mode and
    for float32 there (tests).
    """
    mode = grads_kernel_env()
    sixteen_bit = jnp.dtype(op_dtype).itemsize == 2
    if mode == "mosaic":
        return "mosaic" if supported and (sixteen_bit or interpret) else "triton"
    if mode == "auto":
        return "mosaic" if supported and sixteen_bit and not interpret and has_wgmma() else "triton"
    return mode


def use_local_vjp_kernel() -> bool:
    """Whether the chunk-local VJP runs as the kernel of `chunk_local_bwd` (env MDN_LOCAL_VJP_KERNEL, default 1),
    instead of XLA products (`local_vjp.local_stage_vjp`)."""
    return _env("MDN_LOCAL_VJP_KERNEL", 1) != 0


def local_vjp_config() -> KernelBlocks:
    """The chunk-local VJP kernel: per program [C, C] float32 tiles (T, dT, Qb Kt^T, P Kt^T) and [C, block_k]
    blocks. S400 on an H200 (8ef7c6b): fwd+bwd 5.19 ms with it (block_k 32, 4 warps) vs 5.67 with XLA products;
    8 warps 5.59, block_k 64 with 8 warps 5.31. 1.3B (H200, 98f08c9, interleaved): block_k 32 6.74 ms, 64 6.75,
    128 7.25."""
    return KernelBlocks(block_k=_env("MDN_LOCAL_VJP_BLOCK_K", 32), block_v=_env("MDN_LOCAL_VJP_BLOCK_V", 64),
                        num_warps=_env("MDN_LOCAL_VJP_WARPS", 4))


_STAGES = {"pass": 2, "pass_save": 2, "pass_bwd": 2, "local": 1, "grads": 2, "local_vjp": 2}


def num_stages(family: str, K: int, dtype, block_v: int | None = None) -> int:
    """Triton software-pipelining stages (the next loop step's loads issued ahead, buffered in shared memory) of
    a kernel family: 'pass' (forward pass alone), 'pass_save' (forward pass writing the chunk states),
    'pass_bwd' (reverse sweep), 'local' (chunk-local forward), 'grads' (pass cotangents), 'local_vjp'.

    H200 (experiments/results/h200_2026-12-01_07a86da): S400 fwd+bwd 4.39 ms with these defaults vs 5.19 with 1
    everywhere; one at a time (48ac71a) 2 in the saving pass and the reverse sweep gave 4.69 vs 5.30, in the
    cotangent kernel 5.10, in the chunk-local VJP 5.20, in the chunk-local forward nothing (5.29). The forward
    pass alone (block_v: its V block) keeps 2 only for block_v <= 32 (405c347, S400 at block_v 32: 1.35 ms vs
    1.54 with 1; at 64: 1.31 vs 1.26 with 1, 48ac71a); 3 in the passes exceeds shared memory. The passes buffer
    whole [C, K] tiles, so they keep 2 only for K rows of <= 256 bytes (at 1.3B, K=256 in bf16, 2 exceeds shared
    memory); the cotangent and chunk-local VJP kernels loop over K blocks and keep 2 for 16-bit operands (1.3B:
    9.20 ms vs 9.59). float32 operands keep 1 (not measured).
    """
    itemsize = jnp.dtype(dtype).itemsize
    fits = K * itemsize <= 256 if family.startswith("pass") else itemsize <= 2
    if family == "pass" and block_v is not None and block_v > 32:
        fits = False
    return _env(f"MDN_STAGES_{family.upper()}", _STAGES[family] if fits else 1)


def use_gate_vjp_kernel() -> bool:
    """Whether the VJP of the gate-coefficient map runs as the kernel of `mdn_jax.pallas.gate_vjp` (env
    MDN_GATE_VJP_KERNEL, default 1), instead of XLA's autodiff of `mdn_jax.pallas.local_vjp.coefficients`."""
    return os.environ.get("MDN_GATE_VJP_KERNEL", "1") != "0"


def gate_vjp_warps() -> int:
    """Warps of the gate-VJP kernel (env MDN_GATE_VJP_WARPS): its [C, C] float32 tiles take 32 registers per thread
    each at 4 warps, 16 at 8. S400 fwd+bwd on an H200 (e1036fa): 4.19 ms with 8 warps, 4.79 with 4 (the kernel
    alone 0.99 ms per call at 4), 4.20 with XLA's autodiff instead of the kernel."""
    return _env("MDN_GATE_VJP_WARPS", 8)


