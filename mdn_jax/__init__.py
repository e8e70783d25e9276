"""mdn-jax: Momentum DeltaNet in JAX (Pallas GPU kernels, Flax NNX models, Optax training)."""

from mdn_jax.ops import gated_delta_rule, momentum_delta_rule

__version__ = "0.1.0"
__all__ = ["gated_delta_rule", "momentum_delta_rule"]
