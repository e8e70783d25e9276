"""Checkpoint conversion: NNX -> PyTorch-layout dict -> safetensors -> NNX, names and error cases."""

import jax
import numpy as np
import pytest
from flax import nnx

from mdn_jax import convert
from mdn_jax.model import MomentumDeltaNet, build_model


def _params(m):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(m, nnx.Param))]


@pytest.mark.parametrize("name", ["tiny_hybrid", "tiny_gdn", "tiny_transformer"])
def test_round_trip_through_safetensors(tmp_path, name):
    src, dst = build_model(name, seed=0), build_model(name, seed=1)
    assert any(not np.array_equal(a, b) for a, b in zip(_params(src), _params(dst), strict=True))
    convert.save_safetensors(src, tmp_path / "m.safetensors")
    convert.load_safetensors(dst, tmp_path / "m.safetensors")
    for a, b in zip(_params(src), _params(dst), strict=True):
        np.testing.assert_array_equal(a, b)


def test_names_and_layouts():
    m = build_model("tiny_hybrid")
    sd = convert.to_torch_state_dict(m)
    c = m.config
    assert sd["model.embeddings.weight"].shape == (c.vocab_size, c.hidden_size)
    assert sd["lm_head.weight"].shape == (c.vocab_size, c.hidden_size)
    q = sd["model.layers.0.attn.q_proj.weight"]
    assert q.shape == (c.key_dim, c.hidden_size)  # torch Linear [out, in]
    np.testing.assert_array_equal(q, np.asarray(m.layers[0].attn.q_proj.kernel[...]).T)
    conv = sd["model.layers.0.attn.v_conv1d.weight"]
    assert conv.shape == (c.value_dim, 1, c.conv_size)
    np.testing.assert_array_equal(conv[:, 0, :], np.asarray(m.layers[0].attn.v_conv1d.weight[...]).T)
    for n in ("A_log", "Mu_log", "dt_bias", "mu_bias", "log_factor", "D_log", "o_norm.weight", "m_proj.weight",
              "e_proj.weight", "g_proj.weight"):
        assert f"model.layers.0.attn.{n}" in sd
    assert "model.layers.1.attn.k_proj.weight" in sd and "model.layers.1.attn.A_log" not in sd
    assert {"model.norm.weight", "model.layers.0.mlp.gate_proj.weight", "model.layers.1.mlp_norm.weight"} <= set(sd)
    tied = convert.to_torch_state_dict(build_model("tiny_transformer"))
    assert "lm_head.weight" not in tied


def test_single_layer_names_match_fla_layer():
    layer = MomentumDeltaNet(32, num_heads=2, head_dim=8, use_lora_gate=True, rngs=nnx.Rngs(0))
    sd = convert.to_torch_state_dict(layer)
    assert {"q_proj.weight", "g_proj.0.weight", "g_proj.1.weight", "g_proj.1.bias", "q_conv1d.weight",
            "A_log", "o_proj.weight"} <= set(sd)
    other = MomentumDeltaNet(32, num_heads=2, head_dim=8, use_lora_gate=True, rngs=nnx.Rngs(3))
    convert.from_torch_state_dict(other, sd)
    for a, b in zip(_params(layer), _params(other), strict=True):
        np.testing.assert_array_equal(a, b)


def test_errors():
    m = build_model("tiny_hybrid")
    sd = convert.to_torch_state_dict(m)
    bad = dict(sd)
    del bad["model.layers.0.attn.A_log"]
    bad["model.layers.0.attn.extra.weight"] = np.zeros(3, np.float32)
    bad["model.layers.0.attn.q_proj.weight"] = bad["model.layers.0.attn.q_proj.weight"].T
    bad["model.layers.0.attn.k_conv1d.weight"] = np.zeros((32, 4), np.float32)
    with pytest.raises(convert.ConversionError) as e:
        convert.from_torch_state_dict(m, bad)
    msg = str(e.value)
    assert "missing tensors (1): ['model.layers.0.attn.A_log']" in msg
    assert "unexpected tensors (1): ['model.layers.0.attn.extra.weight']" in msg
    assert "model.layers.0.attn.q_proj.weight: got (64, 32), expected (32, 64)" in msg
    assert "model.layers.0.attn.k_conv1d.weight" in msg
    before = _params(m)
    with pytest.raises(convert.ConversionError):
        convert.from_torch_state_dict(m, {k: v for k, v in sd.items() if k != "lm_head.weight"})
    for a, b in zip(before, _params(m), strict=True):  # a failed load leaves the model untouched
        np.testing.assert_array_equal(a, b)
