"""The momentum delta rule operator: one API, a `lax.scan` reference, a chunked jnp path and Pallas kernels."""

from mdn_jax.ops.api import default_implementation, gated_delta_rule, l2norm, momentum_delta_rule
from mdn_jax.ops.decode import momentum_delta_rule_step
from mdn_jax.ops.layout import cu_seqlens_from_segment_ids, segment_ids_from_cu_seqlens

__all__ = [
    "cu_seqlens_from_segment_ids",
    "default_implementation",
    "gated_delta_rule",
    "l2norm",
    "momentum_delta_rule",
    "momentum_delta_rule_step",
    "segment_ids_from_cu_seqlens",
]
