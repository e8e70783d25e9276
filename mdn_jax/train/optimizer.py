"""AdamW with warm-up + cosine schedule, global-norm clipping and a weight-decay mask.

Non-finite steps are skipped in the train step (`mdn_jax.train.step`), and gradient accumulation is a scan over
micro-batches there, so the optimizer here is a plain per-step `optax.GradientTransformation`.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax
from flax import nnx

from mdn_jax.train.config import TrainConfig


def lr_schedule(cfg: TrainConfig) -> optax.Schedule:
    """0 -> cfg.lr linearly over warmup_steps, then cosine to cfg.lr * lr_min_ratio at cfg.steps."""
    warmup = min(cfg.warmup_steps, max(cfg.steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup, decay_steps=max(cfg.steps, warmup + 1),
        end_value=cfg.lr * cfg.lr_min_ratio)


def is_no_decay(path: tuple, var, patterns) -> bool:
    """True for parameters excluded from weight decay.

    Excluded: variables of a class named `NoDecayParam` (or with metadata `no_decay=True`), parameters of
    rank < 2 (norm scales, biases, per-head scalars), and any whose path contains one of `patterns`
    (case-insensitive substrings, e.g. 'norm', 'bias', 'embed').
    """
    meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
    if any(c.__name__ == "NoDecayParam" for c in type(var).__mro__) or meta.get("no_decay", False):
        return True
    if jnp.ndim(var.get_value() if hasattr(var, "get_value") else var) < 2:
        return True
    name = "/".join(str(p) for p in path).lower()
    return any(str(pat).lower() in name for pat in patterns)


def decay_mask(abstract_params: nnx.State, patterns) -> dict:
    """A pure-dict pytree of bools (True = decay) matching `abstract_params.to_pure_dict()`."""
    flat = {path: not is_no_decay(path, var, patterns) for path, var in nnx.to_flat_state(abstract_params)}
    return nnx.State.from_flat_path(flat).to_pure_dict()


def make_optimizer(cfg: TrainConfig, mask) -> optax.GradientTransformation:
    """clip_by_global_norm(clip_norm) then AdamW(schedule, b1, b2, eps, weight_decay on `mask`)."""
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(lr_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=mask),
    )
