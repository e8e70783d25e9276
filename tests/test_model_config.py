"""Config parsing, round-trip and validation errors."""

import json

import pytest

from mdn_jax.model import ModelConfig, available_configs, load_config


def test_shipped_configs_round_trip(tmp_path):
    names = available_configs()
    for n in ("momentum_deltanet_400M", "momentum_deltanet_1B", "momentum_deltanet_400M_3vs1", "tiny_mdn",
              "tiny_gdn", "tiny_hybrid", "tiny_transformer"):
        assert n in names
    for n in names:
        cfg = load_config(n)
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg
        cfg.to_json(tmp_path / f"{n}.json")
        assert load_config(tmp_path / f"{n}.json") == cfg


def test_authors_keys_and_derived_sizes():
    c = load_config("momentum_deltanet_400M")
    assert (c.hidden_size, c.num_heads, c.head_dim, c.head_v_dim, c.key_dim, c.value_dim) == (1024, 6, 128, 256, 768,
                                                                                               1536)
    assert c.mlp_dim == 2816 and c.tau == 32.0 and c.min_log_mu == -2.0 and c.attn is None
    c1 = load_config("momentum_deltanet_1B")
    assert c1.mlp_dim == 5632 and c1.tau == 16.0 and c1.min_log_mu == -1.0
    h = load_config("momentum_deltanet_400M_3vs1")
    assert h.attn.layers == (3, 7, 11, 15, 19, 23) and h.attn.num_heads == 8 and h.attn.rope_theta == 10000.0
    assert [i for i in range(24) if h.is_attention_layer(i)] == [3, 7, 11, 15, 19, 23]
    assert load_config("tiny_transformer").is_attention_layer(0)


def test_ignored_and_unknown_keys():
    d = load_config("tiny_mdn").to_dict()
    ModelConfig.from_dict({**d, "allow_neg_eigval": True, "fuse_swiglu": True, "attn_mode": "chunk"})
    with pytest.raises(ValueError, match=r"unknown config keys \['bogus_key', 'zzz'\]"):
        ModelConfig.from_dict({**d, "bogus_key": 1, "zzz": 2})
    with pytest.raises(ValueError, match="unknown keys in attn"):
        ModelConfig.from_dict({**d, "attn": {"layers": [0], "num_heads": 2, "heads": 3}})


@pytest.mark.parametrize("change, field", [
    ({"expand_v": 0.3}, "expand_v"),
    ({"num_v_heads": 3}, "num_v_heads"),
    ({"attn": {"layers": [0, 2], "num_heads": 4}}, "attn.layers"),
    ({"attn": {"layers": [0], "num_heads": 3}}, "attn.num_heads"),
    ({"model_type": "mamba"}, "model_type"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"chunk_size": 48}, "chunk_size"),
    ({"tau_factor": 0.5}, "tau_factor"),
])
def test_bad_configs_name_the_field(change, field):
    d = load_config("tiny_mdn").to_dict()  # 2 layers, hidden 64, 2 heads of 16
    with pytest.raises(ValueError, match=f"`{field}`"):
        ModelConfig.from_dict({**d, **change})


def test_missing_config_name():
    with pytest.raises(FileNotFoundError, match="tiny_mdn"):
        load_config("no_such_config")


def test_json_with_null_intermediate(tmp_path):
    d = load_config("tiny_gdn").to_dict()
    d["intermediate_size"] = None
    p = tmp_path / "c.json"
    p.write_text(json.dumps(d))
    assert load_config(p).mlp_dim == 256 * -(-int(64 * 4 * 2 / 3) // 256)
