"""Inference: jit-compiled generation with the recurrent state cache, sampling, streaming, model loading."""

from mdn_jax.inference.generate import (
    filter_logits,
    generate,
    generate_tokens,
    sample_logits,
    stream_generate,
    stream_tokens,
)
from mdn_jax.inference.loading import load_model

__all__ = ["filter_logits", "generate", "generate_tokens", "load_model", "sample_logits", "stream_generate",
           "stream_tokens"]
