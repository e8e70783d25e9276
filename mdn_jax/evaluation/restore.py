"""Load a trained run (the `--out` directory of `mdn-jax train`) for evaluation on one host.

A run directory holds `config.json` (the TrainConfig) and `params/` (the params export written at the end) and/or
`checkpoints/<step>/` (full train state); `params/` is preferred, else the newest readable checkpoint is used.
The model is rebuilt from the saved config by the same code as training (`model_factory` + `make_setup`), on a
mesh of all local devices without FSDP/tensor parallelism.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from mdn_jax.errors import UserError


@dataclasses.dataclass
class Run:
    """A restored run: cfg (TrainConfig), setup (TrainSetup), params (pure dict), tokenizer, step (or None)."""

    cfg: Any
    setup: Any
    params: dict
    tokenizer: Any
    step: int | None
    directory: str

    def model(self, params: dict | None = None):
        """The NNX model with `params` (default: the restored ones); usable inside jit with traced params."""
        return self.setup.merge(self.params if params is None else params)


def load_run(directory: str, tokenizer: str | None = None) -> Run:
    """Restore the run in `directory` (UserError with a clear message when it is not one)."""
    from mdn_jax.data.tokenizers import get_tokenizer
    from mdn_jax.train import sharding as shd
    from mdn_jax.train.checkpoint import Checkpointer, load_params
    from mdn_jax.train.config import TrainConfig
    from mdn_jax.train.model_api import model_factory
    from mdn_jax.train.state import abstract_state, make_setup

    if not os.path.isdir(directory):
        raise UserError(f"checkpoint directory not found: {directory}")
    cfg_path = os.path.join(directory, "config.json")
    if not os.path.isfile(cfg_path):
        raise UserError(f"{directory} is not a training run: no config.json (pass the --out directory of "
                        "`mdn-jax train`)")
    try:
        with open(cfg_path) as f:
            d = json.load(f)
        cfg = TrainConfig(**d)
    except (json.JSONDecodeError, TypeError) as e:
        raise UserError(f"cannot read {cfg_path}: {e}") from None
    cfg = dataclasses.replace(cfg, mesh_data=-1, mesh_fsdp=1, mesh_tensor=1)
    tok = get_tokenizer(tokenizer or cfg.tokenizer)
    make_model, model_cfg = model_factory(cfg, tok.vocab_size)
    mesh = shd.make_mesh(cfg.mesh_data, cfg.mesh_fsdp, cfg.mesh_tensor)
    setup = make_setup(cfg, mesh, make_model, model_cfg)
    vocab = getattr(model_cfg, "vocab_size", None)
    if vocab is not None and tokenizer is not None and tok.vocab_size > vocab:
        raise UserError(f"tokenizer {tok.name} has {tok.vocab_size} tokens, the model only {vocab}")
    abstract = abstract_state(setup)
    params_dir = os.path.join(directory, "params")
    step = None
    if os.path.isdir(params_dir):
        try:
            params = load_params(params_dir, abstract["params"])
        except Exception as e:  # noqa: BLE001 - orbax raises many types for unreadable/mismatched params
            raise UserError(f"cannot read params from {params_dir}: {str(e).splitlines()[0][:200]}") from None
        ckpts = os.path.join(directory, "checkpoints")
        steps = [int(n) for n in os.listdir(ckpts) if n.isdigit()] if os.path.isdir(ckpts) else []
        step = max(steps) if steps else None
    else:
        ckpt_dir = os.path.join(directory, "checkpoints")
        if not os.path.isdir(ckpt_dir):
            raise UserError(f"{directory} has neither params/ nor checkpoints/")
        ckpt = Checkpointer(ckpt_dir, async_save=False)
        try:
            restored = ckpt.restore_latest(abstract)
        finally:
            ckpt.close()
        if restored is None:
            raise UserError(f"no checkpoint in {ckpt_dir}")
        step, state, _, _ = restored
        params = state["params"]
    return Run(cfg, setup, params, tok, step, os.path.abspath(directory))
