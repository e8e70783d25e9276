"""Checkpoint conversion between our NNX models and the authors' PyTorch layout (safetensors).

Names are those of the authors' HF `MomentumDeltaNetForCausalLM` (FLA layout; the same for FLA's
`GatedDeltaNetForCausalLM` and `TransformerForCausalLM`-style attention blocks):

    model.embeddings.weight                       [vocab, D]       <- embeddings.embedding (same layout)
    model.layers.{i}.attn_norm.weight / mlp_norm.weight / model.norm.weight
    model.layers.{i}.attn.{q,k,v,a,b,m,e,g,o}_proj.weight   [out, in]   <- *.kernel [in, out] (transposed)
    model.layers.{i}.attn.g_proj.0.weight, g_proj.1.{weight,bias}        <- g_proj_a / g_proj_b (LoRA gate)
    model.layers.{i}.attn.{q,k,v}_conv1d.weight     [C, 1, W]      <- *_conv1d.weight [W, C]
    model.layers.{i}.attn.{A_log,Mu_log,dt_bias,mu_bias,log_factor,D_log}   [HV]
    model.layers.{i}.attn.o_norm.weight             [V]
    model.layers.{i}.mlp.{gate,up,down}_proj.weight [out, in]
    lm_head.weight                                  [vocab, D]     <- lm_head.kernel [D, vocab] (untied only)

A single mixer (our `MomentumDeltaNet` / `GatedDeltaNet` / `Attention`) converts to the state dict of the
corresponding FLA layer (names without the `model.layers.{i}.attn.` prefix).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    "ConversionError", "from_torch_state_dict", "load_safetensors", "save_safetensors", "to_torch_state_dict",
    "torch_names",
]


class ConversionError(ValueError):
    """Missing, unexpected or mis-shaped tensors when loading a PyTorch-layout state dict."""


def _ident(x):
    return x


def _transpose(x):
    return np.ascontiguousarray(np.swapaxes(x, 0, 1))


def _conv_to_torch(x):  # [W, C] -> [C, 1, W]
    return np.ascontiguousarray(np.transpose(x)[:, None, :])


def _conv_from_torch(x):  # [C, 1, W] -> [W, C]
    if x.ndim != 3 or x.shape[1] != 1:
        raise ConversionError(f"conv weight must be [C, 1, W], got {x.shape}")
    return np.ascontiguousarray(np.transpose(x[:, 0, :]))


_RENAME = {"g_proj_a": "g_proj.0", "g_proj_b": "g_proj.1"}


def _is_model(module) -> bool:
    from mdn_jax.model.model import CausalLM

    return isinstance(module, CausalLM)


def _name_of(path: tuple, model: bool) -> tuple[str, Callable, Callable]:
    """Our flat-state path -> (torch name, to_torch transform, from_torch transform)."""
    parts = [str(p) for p in path]
    leaf = parts[-1]
    to_t, from_t = _ident, _ident
    if parts[-2:] == ["embeddings", "embedding"]:
        parts = parts[:-1] + ["weight"]
    elif leaf == "kernel":
        parts[-1] = "weight"
        to_t, from_t = _transpose, _transpose
    elif leaf == "weight" and len(parts) >= 2 and parts[-2].endswith("_conv1d"):
        to_t, from_t = _conv_to_torch, _conv_from_torch
    parts = [_RENAME.get(p, p) for p in parts]
    name = ".".join(parts)
    if model and not name.startswith("lm_head."):
        name = "model." + name
    return name, to_t, from_t


def _flat_params(module):
    return list(nnx.to_flat_state(nnx.state(module, nnx.Param)))


def torch_names(module) -> dict[str, tuple]:
    """PyTorch name -> our flat-state path, for a CausalLM or a single mixer layer."""
    model = _is_model(module)
    return {_name_of(path, model)[0]: path for path, _ in _flat_params(module)}


def to_torch_state_dict(module) -> dict[str, np.ndarray]:
    """NNX module -> dict of NumPy arrays in PyTorch layout and names (dtype of our parameters)."""
    model = _is_model(module)
    out = {}
    for path, var in _flat_params(module):
        name, to_t, _ = _name_of(path, model)
        out[name] = to_t(np.asarray(var.get_value()))
    return out


def from_torch_state_dict(module, state_dict: dict[str, np.ndarray]) -> None:
    """Load a PyTorch-layout state dict into `module` in place (values cast to our parameter dtypes).

    Raises ConversionError listing every missing, unexpected and mis-shaped tensor. For a tied-embedding
    model an extra `lm_head.weight` is accepted if it equals the embedding.
    """
    model = _is_model(module)
    flat = _flat_params(module)
    expected = {}
    for path, var in flat:
        name, _, from_t = _name_of(path, model)
        expected[name] = (path, var, from_t)
    sd = dict(state_dict)
    if model and module.config.tie_word_embeddings and "lm_head.weight" in sd and "lm_head.weight" not in expected:
        tied = sd.pop("lm_head.weight")
        emb = sd.get("model.embeddings.weight")
        if emb is not None and not np.array_equal(np.asarray(tied), np.asarray(emb)):
            raise ConversionError("tie_word_embeddings is set but lm_head.weight differs from model.embeddings.weight")
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    bad_shape, updates = [], {}
    for name in sorted(set(expected) & set(sd)):
        path, var, from_t = expected[name]
        try:
            arr = from_t(np.asarray(sd[name]))
        except ConversionError as e:
            bad_shape.append(f"{name}: {e}")
            continue
        if arr.shape != var.get_value().shape:
            want = _name_of(path, model)[1](np.zeros(var.get_value().shape, np.int8)).shape
            bad_shape.append(f"{name}: got {tuple(np.shape(sd[name]))}, expected {tuple(want)}")
            continue
        updates[path] = jnp.asarray(arr, dtype=var.get_value().dtype)
    if missing or unexpected or bad_shape:
        msg = []
        if missing:
            msg.append(f"missing tensors ({len(missing)}): {missing}")
        if unexpected:
            msg.append(f"unexpected tensors ({len(unexpected)}): {unexpected}")
        if bad_shape:
            msg.append(f"mis-shaped tensors ({len(bad_shape)}): {bad_shape}")
        raise ConversionError("; ".join(msg))
    state = nnx.state(module, nnx.Param)
    flat_state = nnx.to_flat_state(state)
    for path, var in flat_state:
        var.set_value(updates[path])
    nnx.update(module, nnx.from_flat_state(flat_state))


def save_safetensors(module, path: str | os.PathLike, dtype=None) -> None:
    """Write `module`'s parameters in PyTorch layout to a safetensors file (optionally cast to `dtype`)."""
    from safetensors.numpy import save_file

    sd = to_torch_state_dict(module)
    if dtype is not None:
        sd = {k: v.astype(dtype) for k, v in sd.items()}
    save_file(sd, str(path))


def load_safetensors(module, path: str | os.PathLike) -> None:
    """Load a PyTorch-layout safetensors file (bf16/fp16/fp32) into `module` in place."""
    from safetensors.numpy import load_file

    from_torch_state_dict(module, load_file(str(path)))
