"""The model interface the trainer needs, and model construction from a config name or a factory.

Required of the NNX module:
  * `__call__(tokens [B, T] int32, segment_ids=None) -> logits [B, T, V]` (segment_ids passed by keyword;
    the model resets its state where the id changes; 0 marks padding).
  * parameters are `nnx.Param` (or subclasses) whose metadata `out_sharding` holds logical axis names, e.g.
    ('embed', 'mlp'); parameters of a class named `NoDecayParam` get no weight decay.
Optional, used when present:
  * `hidden(tokens, segment_ids=None) -> h [B, T, D]` (final-norm hidden states) together with
    `logits_from_hidden(h [..., D]) -> logits [..., V]` (or `logits(h)`): enables the chunked cross-entropy that
    never materialises [B, T, V] float32 logits. Without them the loss uses the full logits.
  * `config`: the model config (authors' key names), used for FLOPs counting.

`cfg.model` is either a model config name / JSON path understood by `mdn_jax.model.load_config`, or
"package.module:factory" where `factory(config: dict, seed: int) -> nnx.Module` (used by the tests' stand-in).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from typing import Any

from flax import nnx

from mdn_jax.errors import UserError
from mdn_jax.train.config import TrainConfig


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def model_factory(cfg: TrainConfig, vocab_size: int) -> tuple[Callable[[], nnx.Module], Any]:
    """(make, model_config): `make()` builds the model deterministically from cfg.seed (call it under
    `nnx.eval_shape` or `jax.jit`); `model_config` is what FLOPs counting reads."""
    vocab = _round_up(vocab_size, cfg.vocab_multiple)
    overrides = dict(cfg.model_overrides)
    overrides.setdefault("vocab_size", vocab)
    overrides.setdefault("dtype", cfg.compute_dtype)
    spec = cfg.model
    if ":" in spec and not os.path.exists(spec):
        mod_name, fn_name = spec.split(":", 1)
        try:
            fn = getattr(importlib.import_module(mod_name), fn_name)
        except (ImportError, AttributeError) as e:
            raise UserError(f"cannot import model factory {spec!r}: {e}") from None
        return (lambda: fn(dict(overrides), seed=cfg.seed)), dict(overrides)
    try:
        from mdn_jax.model import CausalLM, load_config
        from mdn_jax.model.config import ModelConfig
    except ImportError as e:
        raise UserError(f"model {spec!r} needs the mdn_jax.model package (issue 4), not importable here: {e}") from None
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    overrides = {k: v for k, v in overrides.items() if k in known or k in cfg.model_overrides}
    try:
        mcfg = load_config(spec, **overrides)
    except (ValueError, TypeError, FileNotFoundError, KeyError) as e:
        raise UserError(f"model config {spec!r}: {e}") from None
    return (lambda: CausalLM(mcfg, rngs=nnx.Rngs(cfg.seed))), mcfg


def logits_fn(model) -> Callable | None:
    """The model's hidden -> logits map, if it exposes one together with `hidden`."""
    if not hasattr(model, "hidden"):
        return None
    return getattr(model, "logits_from_hidden", None) or getattr(model, "logits", None)
