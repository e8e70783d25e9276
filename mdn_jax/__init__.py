"""mdn-jax: Momentum DeltaNet in JAX (Pallas GPU kernels, Flax NNX models, Optax training)."""

from mdn_jax.ops import gated_delta_rule, momentum_delta_rule

__version__ = "0.1.0"
__all__ = ["gated_delta_rule", "generate", "generate_tokens", "load_model", "momentum_delta_rule"]

_INFERENCE = ("generate", "generate_tokens", "load_model")


def __getattr__(name):
    """`mdn_jax.generate`, `generate_tokens`, `load_model`: imported on first use (they pull in Flax)."""
    if name in _INFERENCE:
        from mdn_jax import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'mdn_jax' has no attribute {name!r}")
