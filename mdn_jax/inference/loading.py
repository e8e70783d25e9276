"""Load a model (and its tokenizer) for inference.

Sources, in `load_model(checkpoint, ...)`:
  * a training run directory (what `mdn-jax train --out DIR` writes: config.json, checkpoints/<step>/, params/):
    the model and tokenizer come from config.json; the weights from `params/` (the params-only export written at
    the end of training) or the newest `checkpoints/<step>/` (its `state` item), whichever was written last;
    `step=N` picks checkpoints/N;
  * one step directory `DIR/checkpoints/<step>` (config from the run's config.json two levels up);
  * an exported params directory (`DIR/params` or any `export_params` output): config from ../config.json, or
    from `config=` (a model config name / JSON, with `tokenizer=`) when there is none;
  * `safetensors=FILE` with `config=NAME`: the authors' PyTorch weights via `mdn_jax.convert.load_safetensors`.
Problems (missing path, no config, unreadable weights) raise `UserError`.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mdn_jax.data.tokenizers import get_tokenizer
from mdn_jax.errors import UserError


def _train_config(path: str):
    from mdn_jax.train.config import load_train_config

    return load_train_config(path)


def _newest_step_dir(ckpt_dir: str) -> str | None:
    if not os.path.isdir(ckpt_dir):
        return None
    steps = [int(n) for n in os.listdir(ckpt_dir) if n.isdigit() and os.path.isdir(os.path.join(ckpt_dir, n, "state"))]
    return os.path.join(ckpt_dir, str(max(steps))) if steps else None


def _locate(path: str, step: int | None) -> tuple[str | None, str, str]:
    """(config.json or None, weights dir, kind 'state' | 'params') for a checkpoint path."""
    if os.path.isdir(os.path.join(path, "state")):  # one step directory of a run
        cfg = os.path.join(os.path.dirname(os.path.dirname(path)), "config.json")
        return (cfg if os.path.isfile(cfg) else None), path, "state"
    cfg = os.path.join(path, "config.json")
    if os.path.isfile(cfg) or os.path.isdir(os.path.join(path, "checkpoints")):  # a run directory
        cfg = cfg if os.path.isfile(cfg) else None
        ckpts = os.path.join(path, "checkpoints")
        if step is not None:
            d = os.path.join(ckpts, str(step))
            if not os.path.isdir(os.path.join(d, "state")):
                raise UserError(f"no checkpoint for step {step} in {ckpts}")
            return cfg, d, "state"
        params, newest = os.path.join(path, "params"), _newest_step_dir(ckpts)
        cands = [(os.path.getmtime(p), p, k) for p, k in ((params, "params"), (newest, "state"))
                 if p is not None and os.path.isdir(p)]
        if not cands:
            raise UserError(f"{path} has neither params/ nor a checkpoint under checkpoints/: nothing to load")
        _, d, kind = max(cands)
        return cfg, d, kind
    cfg = os.path.join(os.path.dirname(path), "config.json")  # an exported params directory
    return (cfg if os.path.isfile(cfg) else None), path, "params"


def _restore(d: str, kind: str) -> dict:
    import orbax.checkpoint as ocp

    try:
        if kind == "state":
            return ocp.StandardCheckpointer().restore(os.path.join(d, "state"))["params"]
        return ocp.StandardCheckpointer().restore(d)
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for a bad directory
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read weights from {d}: {type(e).__name__}: {first}") from None


def _fill(abstract_model, restored: dict):
    """Merge restored pure-dict params into an abstract model (shapes checked, dtypes cast)."""
    graphdef, params, rest = nnx.split(abstract_model, nnx.Param, ...)
    flat_want = dict(nnx.to_flat_state(params))
    flat_got = {}

    def walk(prefix, node):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(prefix + (int(k) if isinstance(k, str) and k.isdigit() else k,), v)
        else:
            flat_got[prefix] = node

    walk((), restored)
    want_keys = {tuple(k) for k in flat_want}
    missing, extra = sorted(map(str, want_keys - set(flat_got))), sorted(map(str, set(flat_got) - want_keys))
    if missing or extra:
        raise UserError(f"checkpoint does not match the model config: missing {missing[:5]}, unexpected {extra[:5]}")
    for path, var in flat_want.items():
        arr = flat_got[tuple(path)]
        want = var.get_value()
        if tuple(np.shape(arr)) != tuple(want.shape):
            raise UserError(f"checkpoint tensor {'/'.join(map(str, path))} has shape {np.shape(arr)}, "
                            f"the model expects {want.shape}")
        var.set_value(jnp.asarray(arr, want.dtype))
    params = nnx.from_flat_state(list(flat_want.items()))
    rest = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x, rest)
    return nnx.merge(graphdef, params, rest)


def load_model(checkpoint: str | None = None, *, safetensors: str | None = None, config: str | None = None,
               tokenizer: str | None = None, step: int | None = None):
    """(model, tokenizer) from a run / step / params directory or a safetensors file (see the module doc)."""
    from mdn_jax.model import build_model, load_config

    if (checkpoint is None) == (safetensors is None):
        raise UserError("give exactly one of a checkpoint directory or a safetensors file")
    if safetensors is not None:
        if not os.path.isfile(safetensors):
            raise UserError(f"safetensors file not found: {safetensors}")
        if config is None:
            raise UserError("--safetensors needs --config (the model config name or JSON file)")
        try:
            mcfg = load_config(config)
        except (ValueError, TypeError, FileNotFoundError, KeyError) as e:
            raise UserError(f"model config {config!r}: {e}") from None
        tok = get_tokenizer(tokenizer or ("gpt2" if mcfg.vocab_size >= 50257 else "byte"))
        model = build_model(mcfg)
        from mdn_jax.convert import ConversionError, load_safetensors

        try:
            load_safetensors(model, safetensors)
        except ConversionError as e:
            raise UserError(f"{safetensors} does not match config {config}: {str(e)[:300]}") from None
        return model, tok

    path = os.path.abspath(checkpoint)
    if not os.path.exists(path):
        raise UserError(f"checkpoint path not found: {checkpoint}")
    if not os.path.isdir(path):
        raise UserError(f"checkpoint must be a directory (a training --out dir, a checkpoint step or params "
                        f"export), got the file {checkpoint}; for a .safetensors file use --safetensors")
    cfg_file, weights, kind = _locate(path, step)
    if cfg_file is not None:
        from mdn_jax.train.model_api import model_factory

        tcfg = _train_config(cfg_file)
        tok = get_tokenizer(tokenizer or tcfg.tokenizer)
        make, _ = model_factory(tcfg, tok.vocab_size)
    elif config is not None:
        try:
            mcfg = load_config(config)
        except (ValueError, TypeError, FileNotFoundError, KeyError) as e:
            raise UserError(f"model config {config!r}: {e}") from None
        tok = get_tokenizer(tokenizer or "byte")
        make = lambda: build_model(mcfg)  # noqa: E731
    else:
        raise UserError(f"no config.json found for {checkpoint}: pass --config (model config) and --tokenizer")
    abstract = nnx.eval_shape(make)
    return _fill(abstract, _restore(weights, kind)), tok
