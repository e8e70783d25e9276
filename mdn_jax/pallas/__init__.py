"""Pallas GPU kernels of the momentum delta rule (Triton lowering; interpret mode on CPU)."""

from mdn_jax.pallas.core import pallas_core

__all__ = ["pallas_core"]
