"""The block-size and pipelining table of the Pallas kernels (`mdn_jax.pallas.tuning`)."""

import functools

import jax.numpy as jnp
import pytest

from mdn_jax.pallas import tuning


def _blocks(cfg):
    return cfg.block_v, cfg.block_v_save, cfg.block_v_infer


def test_s400_blocks():
    assert _blocks(tuning.block_config(128, 256, 64, rows=8 * 6)) == (32, 32, 64)


def test_few_rows_halve_the_blocks_down_to_16():
    assert _blocks(tuning.block_config(128, 256, 64, rows=6)) == (16, 16, 16)  # S400 at B=1, T=32768
    assert _blocks(tuning.block_config(128, 256, 64, rows=1)) == (16, 16, 16)
    assert _blocks(tuning.block_config(256, 512, 64, rows=4)) == (16, 16, 16)  # K=256 starts at 16


def test_blocks_never_exceed_v():
    assert _blocks(tuning.block_config(128, 16, 64, rows=1000)) == (16, 16, 16)


def test_env_overrides_the_table(monkeypatch):
    monkeypatch.setenv("MDN_BLOCK_V", "64")
    monkeypatch.setenv("MDN_BLOCK_V_INFER", "128")
    assert _blocks(tuning.block_config(128, 256, 64, rows=6)) == (64, 64, 128)


def test_forward_pass_pipelines_only_small_blocks():
    assert tuning.num_stages("pass", 128, jnp.bfloat16, block_v=64) == 1
    assert tuning.num_stages("pass", 128, jnp.bfloat16, block_v=32) == 2
    assert tuning.num_stages("pass", 256, jnp.bfloat16, block_v=16) == 1  # [C, 256] bf16 tiles: shared memory
    assert tuning.num_stages("pass_save", 128, jnp.bfloat16, block_v=32) == 2
    assert tuning.num_stages("grads", 256, jnp.float32) == 1


def test_mosaic_passes_for_dense_s400_on_the_gpu_only(monkeypatch):
    monkeypatch.setattr(tuning, "has_wgmma", lambda: True)
    cfg = tuning.mosaic_config(128, 256, 8 * 6, jnp.bfloat16, dense=True, interpret=False)
    assert cfg == tuning.MosaicConfig(block_v=32, stages=2, consumers=1)
    assert tuning.mosaic_config(128, 256, 8 * 6, jnp.bfloat16, dense=True, interpret=True) is None
    assert tuning.mosaic_config(128, 256, 8 * 6, jnp.bfloat16, dense=False, interpret=False) is None  # cu_seqlens
    assert tuning.mosaic_config(128, 256, 8 * 6, jnp.float32, dense=True, interpret=False) is None
    wide = tuning.mosaic_config(256, 512, 4 * 6, jnp.bfloat16, dense=True, interpret=False)  # 1.3B
    assert wide == tuning.MosaicConfig(block_v=32, stages=1, consumers=2)
    assert tuning.mosaic_config(64, 128, 8 * 6, jnp.bfloat16, dense=True, interpret=False) is None  # not measured
    # few programs: at K = 128 still the Mosaic passes (they beat the Triton ones' finer V split at T=32768)
    assert tuning.mosaic_config(128, 256, 6, jnp.bfloat16, dense=True, interpret=False) == cfg
    assert tuning.mosaic_config(256, 512, 6, jnp.bfloat16, dense=True, interpret=False) is None
    # the sequence split's pass over 2K + V columns: two consumers (its programs weighed by seq_split_segments)
    split = tuning.mosaic_config(128, 512, 2 * 6, jnp.bfloat16, dense=True, interpret=False, split=True)
    assert split == tuning.MosaicConfig(block_v=32, stages=2, consumers=2)
    # the forward without differentiation: two consumers where 64-column programs fill the GPU (S400: 192)
    infer = functools.partial(tuning.mosaic_config, op_dtype=jnp.bfloat16, dense=True, interpret=False, infer=True)
    assert infer(128, 256, 8 * 6) == split
    assert infer(128, 256, 4 * 6) == cfg  # S400 at B=4: 96 programs at two consumers, so one
    assert infer(256, 512, 4 * 6) == wide
    monkeypatch.setenv("MDN_MOSAIC_CONSUMERS", "1")
    assert infer(128, 256, 8 * 6) == cfg


def test_mosaic_env_switch(monkeypatch):
    monkeypatch.setenv("MDN_MOSAIC", "1")
    assert tuning.mosaic_config(64, 128, 2, jnp.float32, dense=True, interpret=True) is not None
    assert tuning.mosaic_config(64, 128, 2, jnp.float32, dense=True, interpret=False) is None  # wgmma: 16-bit
    assert tuning.mosaic_config(64, 128, 2, jnp.float32, dense=False, interpret=True) is None
    wide = tuning.mosaic_config(256, 512, 4 * 6, jnp.bfloat16, dense=True, interpret=False)
    assert wide == tuning.MosaicConfig(block_v=32, stages=1, consumers=2)  # what fits shared memory at K = 256
    monkeypatch.setenv("MDN_MOSAIC_BLOCK_V", "64")
    monkeypatch.setenv("MDN_MOSAIC_CONSUMERS", "1")
    monkeypatch.setenv("MDN_MOSAIC_STAGES", "2")
    assert tuning.mosaic_config(256, 512, 4 * 6, jnp.bfloat16, dense=True, interpret=False) == (64, 2, 1)
    monkeypatch.setenv("MDN_MOSAIC", "0")
    assert tuning.mosaic_config(128, 256, 8 * 6, jnp.bfloat16, dense=True, interpret=False) is None
    monkeypatch.setenv("MDN_MOSAIC", "yes")
    with pytest.raises(ValueError, match="MDN_MOSAIC"):
        tuning.mosaic_config(128, 256, 8 * 6, jnp.bfloat16, dense=True, interpret=False)


def test_mosaic_paths_need_hopper(monkeypatch):
    """'auto' keeps the Triton kernels on GPUs without wgmma (compute capability other than 9.x) and on CPU."""
    monkeypatch.setattr(tuning, "has_wgmma", lambda: False)
    assert tuning.mosaic_config(128, 256, 8 * 6, jnp.bfloat16, dense=True, interpret=False) is None
    assert tuning.grads_kernel(True, jnp.bfloat16, interpret=False) == "triton"
    monkeypatch.setattr(tuning, "has_wgmma", lambda: True)
    assert tuning.grads_kernel(True, jnp.bfloat16, interpret=False) == "mosaic"


def test_has_wgmma_reads_the_compute_capability(monkeypatch):
    class Device:
        def __init__(self, capability):
            self.compute_capability = capability

    for capability, expected in (("9.0", True), ("8.0", False), ("10.0", False)):
        monkeypatch.setattr(tuning.jax, "devices", lambda c=capability: [Device(c)])
        assert tuning.has_wgmma() is expected
    monkeypatch.setattr(tuning.jax, "devices", lambda: [object()])  # CPU devices have no compute capability
    assert tuning.has_wgmma() is False


def test_mosaic_accumulation_in_place_on_the_gpu_only(monkeypatch):
    from mdn_jax.pallas import mosaic_common

    assert mosaic_common.in_place(interpret=False) is True
    assert mosaic_common.in_place(interpret=True) is False  # the interpreter: fresh accumulators
    monkeypatch.setenv("MDN_MOSAIC_ACC", "fresh")
    assert mosaic_common.in_place(interpret=False) is False
    monkeypatch.setenv("MDN_MOSAIC_ACC", "yes")
    with pytest.raises(ValueError, match="MDN_MOSAIC_ACC"):
        mosaic_common.in_place(interpret=False)
    # the sequential passes' state updates have their own switch
    assert mosaic_common.in_place(interpret=False, env="MDN_MOSAIC_PASS_ACC") is True
    monkeypatch.setenv("MDN_MOSAIC_PASS_ACC", "fresh")
    assert mosaic_common.in_place(interpret=False, env="MDN_MOSAIC_PASS_ACC") is False


def test_prep_config_env(monkeypatch):
    assert tuning.prep_config() == tuning.PrepConfig(use_fwd_kernel=True, use_kernel=True, block_rows=32,
                                                     num_warps=4)
    monkeypatch.setenv("MDN_PREP_KERNEL", "0")
    monkeypatch.setenv("MDN_PREP_BLOCK_ROWS", "64")
    assert tuning.prep_config() == tuning.PrepConfig(use_fwd_kernel=True, use_kernel=False, block_rows=64,
                                                     num_warps=4)
    monkeypatch.setenv("MDN_PREP_FWD_KERNEL", "0")
    assert tuning.prep_config().use_fwd_kernel is False


def test_seq_split_only_for_few_long_dense_rows():
    split = functools.partial(tuning.seq_split_segments, sms=132)
    # S400 at B=1, T=32768 (6 rows of 512 chunks) on 132 SMs, programs of 64 state columns: from a zero start 3
    # (6 x 20 = 120 programs, segment 0 without identity columns, one wave of 171 steps); else 8 (384 programs,
    # three waves of 64 steps)
    assert split(6, 512, 128, 256, dense=True, zero_start=True) == 3
    assert split(6, 512, 128, 256, dense=True) == 8
    assert split(2, 128, 128, 256, dense=True) == 6  # segments of at least 16 chunks (8 at most): 96 programs
    assert split(2, 97, 128, 256, dense=True) == 5  # ragged segments (20 and 19 chunks) of one wave
    assert split(6, 16, 128, 256, dense=True) == 1
    assert split(24, 64, 128, 256, dense=True) == 1  # S400 at B=4: enough programs unsplit
    assert split(48, 64, 128, 256, dense=True) == 1
    assert split(6, 512, 128, 256, dense=False) == 1  # packed sequences
    assert split(6, 512, 256, 512, dense=True) == 1  # K = 256: not measured


def test_split_cost_counts_waves_of_programs():
    """`split_cost`: waves of one program per SM times the steps of the longest segment, plus a cost per
    segment; the first segment's identity programs dropped from a zero start."""
    cost = functools.partial(tuning.split_cost, rows=6, num_chunks=512, K=128, V=256, width=128, sms=132)
    assert cost(4, zero_start=False) == 1 * 128 + 3 * 4  # 96 programs
    assert cost(6, zero_start=False) == 2 * 86 + 3 * 6  # 144 programs: two waves
    assert cost(6, zero_start=True) == 1 * 86 + 3 * 6  # 132 programs
    assert cost(16, zero_start=False) == 3 * 32 + 3 * 16  # 384 programs
    assert tuning.split_programs(6, 256, 256, 128, skip_first=True) == 22
    narrow = functools.partial(cost, width=64)  # the split's pass now: two consumers of 32 columns
    assert narrow(3, zero_start=True) == 1 * 171 + 3 * 3  # 120 programs, ragged (171, 171, 170 chunks)
    assert narrow(4, zero_start=True) == 2 * 128 + 3 * 4  # 168 programs: two waves


def test_seq_split_env(monkeypatch):
    monkeypatch.setenv("MDN_SEQ_SPLIT", "4")
    assert tuning.seq_split_segments(48, 64, 128, 256, dense=True) == 4
    assert tuning.seq_split_segments(48, 64, 128, 256, dense=False) == 1
    monkeypatch.setenv("MDN_SEQ_SPLIT", "1")
    assert tuning.seq_split_segments(6, 512, 128, 256, dense=True) == 1
    monkeypatch.setenv("MDN_SEQ_SPLIT", "3")  # ragged segments
    assert tuning.seq_split_segments(6, 64, 128, 256, dense=True) == 3
    monkeypatch.setenv("MDN_SEQ_SPLIT", "65")
    with pytest.raises(ValueError, match="between 1 and the 64 chunks"):
        tuning.seq_split_segments(6, 64, 128, 256, dense=True)


def test_split_add_kernel_switch(monkeypatch):
    monkeypatch.delenv("MDN_SPLIT_ADD_KERNEL", raising=False)
    assert tuning.split_add_kernel() is True  # the kernel won on the GPU
    monkeypatch.setenv("MDN_SPLIT_ADD_KERNEL", "0")
    assert tuning.split_add_kernel() is False
