"""Flax NNX models: Momentum DeltaNet layer, Gated DeltaNet and attention baselines, language model."""

from mdn_jax.model.attention import Attention, KVCache
from mdn_jax.model.config import AttnConfig, ModelConfig, available_configs, load_config
from mdn_jax.model.delta_mixers import DeltaCache, GatedDeltaNet, MDNGates, MomentumDeltaNet
from mdn_jax.model.mlp import SwiGLU
from mdn_jax.model.model import Block, CausalLM, build_model, count_params
from mdn_jax.model.norms import GatedRMSNorm, RMSNorm
from mdn_jax.model.params import NoDecayParam, no_weight_decay_mask

__all__ = [
    "Attention", "AttnConfig", "Block", "CausalLM", "DeltaCache", "GatedDeltaNet", "GatedRMSNorm", "KVCache",
    "MDNGates", "ModelConfig", "MomentumDeltaNet", "NoDecayParam", "RMSNorm", "SwiGLU", "available_configs",
    "build_model", "count_params", "load_config", "no_weight_decay_mask",
]
