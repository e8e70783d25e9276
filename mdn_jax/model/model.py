"""Causal language model: embedding -> pre-norm blocks (mixer + SwiGLU) -> RMSNorm -> LM head.

The mixer of layer i is softmax `Attention` if `cfg.is_attention_layer(i)` (hybrid indices, or every layer
of a transformer), else `MomentumDeltaNet` (model_type 'momentum_deltanet') or `GatedDeltaNet`
('gated_deltanet'). Attribute names follow the authors' HF model so that `mdn_jax.convert` is a rename.

Decoding: `cache = model.init_cache(B, max_len)`; `logits, cache = model.prefill(tokens, cache)` runs the
chunked operator from the cached state and returns the final state; then
`logits_t, cache = model.decode_step(token_t, cache)` advances one token with the recurrent step.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from flax import nnx

from mdn_jax.model.attention import Attention
from mdn_jax.model.config import ModelConfig
from mdn_jax.model.delta_mixers import GatedDeltaNet, MomentumDeltaNet
from mdn_jax.model.mlp import SwiGLU
from mdn_jax.model.norms import RMSNorm
from mdn_jax.model.params import linear, normal_init


def _dt(name: str):
    return jnp.dtype(name)


def make_mixer(cfg: ModelConfig, layer_idx: int, rngs: nnx.Rngs) -> nnx.Module:
    """The token mixer of layer `layer_idx` as the config says."""
    common = dict(initializer_range=cfg.initializer_range, dtype=_dt(cfg.dtype), param_dtype=_dt(cfg.param_dtype),
                  rngs=rngs)
    if cfg.is_attention_layer(layer_idx):
        nh, nkv, theta, bias = cfg.attention_heads()
        return Attention(cfg.hidden_size, num_heads=nh, num_kv_heads=nkv, qkv_bias=bias, rope_theta=theta, **common)
    delta = dict(num_heads=cfg.num_heads, head_dim=cfg.head_dim, expand_v=cfg.expand_v, num_v_heads=cfg.num_v_heads,
                 use_gate=cfg.use_gate, use_lora_gate=cfg.use_lora_gate, lora_gate_rank=cfg.lora_gate_rank,
                 use_short_conv=cfg.use_short_conv, conv_size=cfg.conv_size, conv_bias=cfg.conv_bias,
                 norm_eps=cfg.norm_eps, chunk_size=cfg.chunk_size, implementation=cfg.implementation, **common)
    if cfg.model_type == "momentum_deltanet":
        return MomentumDeltaNet(cfg.hidden_size, use_output_correction=cfg.use_output_correction,
                                use_p_times_alpha=cfg.use_p_times_alpha, min_log_mu=cfg.min_log_mu,
                                tau_factor=cfg.tau_factor, **delta)
    return GatedDeltaNet(cfg.hidden_size, allow_neg_eigval=cfg.allow_neg_eigval, **delta)


class Block(nnx.Module):
    """h = x + attn(attn_norm(x)); y = h + mlp(mlp_norm(h)). x: [B,T,D]; same call/cache contract as the mixer."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, *, rngs: nnx.Rngs):
        pdt = _dt(cfg.param_dtype)
        self.attn_norm = RMSNorm(cfg.hidden_size, eps=cfg.norm_eps, param_dtype=pdt)
        self.attn = make_mixer(cfg, layer_idx, rngs)
        self.mlp_norm = RMSNorm(cfg.hidden_size, eps=cfg.norm_eps, param_dtype=pdt)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.mlp_dim, std=cfg.initializer_range, rngs=rngs,
                          dtype=_dt(cfg.dtype), param_dtype=pdt)

    def __call__(self, x, *, segment_ids=None, cache=None):
        out = self.attn(self.attn_norm(x), segment_ids=segment_ids, cache=cache)
        h, new_cache = out if cache is not None else (out, None)
        h = x + h
        y = h + self.mlp(self.mlp_norm(h))
        return y if cache is None else (y, new_cache)


class CausalLM(nnx.Module):
    """MDN / GDN / hybrid / transformer language model.

    Construction: `CausalLM(cfg: ModelConfig, *, rngs: nnx.Rngs)`.
    Parameters: embeddings.embedding [vocab, D]; layers[i] (Block); norm.weight [D];
    lm_head.kernel [D, vocab] unless cfg.tie_word_embeddings (then logits = h @ embedding^T).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        dt, pdt = _dt(cfg.dtype), _dt(cfg.param_dtype)
        self.embeddings = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dt, param_dtype=pdt,
                                    embedding_init=normal_init(cfg.initializer_range, ("vocab", "embed")), rngs=rngs)
        self.layers = nnx.List([Block(cfg, i, rngs=rngs) for i in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.norm_eps, param_dtype=pdt)
        if not cfg.tie_word_embeddings:
            self.lm_head = linear(cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), std=cfg.initializer_range,
                                  rngs=rngs, dtype=dt, param_dtype=pdt)

    # ---- forward --------------------------------------------------------------------------------
    def __call__(self, tokens: jax.Array, *, segment_ids: jax.Array | None = None, cache: tuple | None = None):
        """tokens [B, T] int -> logits [B, T, vocab] (cfg.logits_dtype).

        segment_ids [B, T] int: packed documents, each processed independently (state, conv and attention
        reset where the id changes). cache: the per-layer tuple from `init_cache`; when given, returns
        (logits, new_cache) and continues from the cached state (T == 1 uses the recurrent step).
        """
        out = self.hidden(tokens, segment_ids=segment_ids, cache=cache)
        h, new_cache = out if cache is not None else (out, None)
        logits = self.logits(h)
        return logits if cache is None else (logits, new_cache)

    def hidden(self, tokens: jax.Array, *, segment_ids: jax.Array | None = None, cache: tuple | None = None):
        """tokens [B, T] int -> final-norm hidden states [B, T, D] (with the new cache if `cache` is given); the
        trainer's chunked cross-entropy maps them to logits a chunk of tokens at a time (`logits_from_hidden`)."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [B, T], got shape {tokens.shape}")
        if segment_ids is not None and segment_ids.shape != tokens.shape:
            raise ValueError(f"segment_ids shape {segment_ids.shape} != tokens shape {tokens.shape}")
        if cache is not None and segment_ids is not None:
            raise ValueError("segment_ids (packed documents) and a decode cache cannot be combined")
        if cache is not None and len(cache) != len(self.layers):
            raise ValueError(f"cache has {len(cache)} layers, the model {len(self.layers)}")
        # Gather rows of the parameter-dtype table, then cast: the gradient is then a float32 scatter-add of
        # B*T rows (nnx.Embed casts the whole table first and scatters in bf16, which is slow on GPUs). The train
        # step keeps the table in float32 for this (`mdn_jax.train.step._cast`).
        x = jnp.take(self.embeddings.embedding.value, tokens, axis=0).astype(_dt(self.config.dtype))
        new_cache = []
        if cache is None and self.config.scan_layers:
            x = _scan_blocks(list(self.layers), x, segment_ids, self.config.remat)
        else:
            for i, block in enumerate(self.layers):
                if cache is not None:
                    x, c = block(x, cache=cache[i])
                    new_cache.append(c)
                elif self.config.remat:
                    x = nnx.remat(lambda b, h, s: b(h, segment_ids=s))(block, x, segment_ids)
                else:
                    x = block(x, segment_ids=segment_ids)
        h = self.norm(x)
        return h if cache is None else (h, tuple(new_cache))

    def logits(self, h: jax.Array) -> jax.Array:
        """Final hidden states [..., D] -> logits [..., vocab] in cfg.logits_dtype."""
        out = self.embeddings.attend(h) if self.config.tie_word_embeddings else self.lm_head(h)
        return out.astype(_dt(self.config.logits_dtype))

    logits_from_hidden = logits

    # ---- decoding -------------------------------------------------------------------------------
    def init_cache(self, batch: int, max_len: int) -> tuple:
        """Per-layer decode caches: `DeltaCache` (conv states, S, M float32) or `KVCache` ([B, max_len, ...])."""
        return tuple(b.attn.init_cache(batch, max_len) if isinstance(b.attn, Attention) else b.attn.init_cache(batch)
                     for b in self.layers)

    def prefill(self, tokens: jax.Array, cache: tuple) -> tuple[jax.Array, tuple]:
        """Process a prompt [B, T] from `cache` (chunked operator) -> (logits [B, T, vocab], cache)."""
        return self(tokens, cache=cache)

    def decode_step(self, token: jax.Array, cache: tuple) -> tuple[jax.Array, tuple]:
        """One token per row, [B] int -> (logits [B, vocab], cache)."""
        logits, cache = self(token[:, None], cache=cache)
        return logits[:, 0], cache


def _scan_blocks(blocks: list, x: jax.Array, segment_ids, remat: bool) -> jax.Array:
    """x [B, T, D] through `blocks` in order, each run of consecutive blocks of one structure (graphdef) as one
    `lax.scan` over their parameters stacked along a new leading axis: the run's body is traced and compiled once.

    The parameter tree stays per layer (checkpoints, sharding rules and conversion are unchanged); the stacking is
    a copy of the run's parameters per call and its transpose a slice of their gradients.
    """
    for graphdef, run in itertools.groupby((nnx.split(b) for b in blocks), key=lambda split: split[0]):
        states = [state for _, state in run]

        def step(h, state, graphdef=graphdef):
            return nnx.merge(graphdef, state)(h, segment_ids=segment_ids), None

        if remat:
            step = jax.checkpoint(step)
        if len(states) == 1:
            x = step(x, states[0])[0]
        else:
            x = jax.lax.scan(step, x, jax.tree.map(lambda *a: jnp.stack(a), *states))[0]
    return x


def build_model(cfg: ModelConfig | str, *, seed: int = 0, **overrides) -> CausalLM:
    """CausalLM from a ModelConfig or a config name/path (see `load_config`)."""
    if not isinstance(cfg, ModelConfig):
        from mdn_jax.model.config import load_config
        cfg = load_config(cfg, **overrides)
    elif overrides:
        cfg = cfg.replace(**overrides)
    return CausalLM(cfg, rngs=nnx.Rngs(seed))


def count_params(cfg: ModelConfig) -> dict[str, int]:
    """Parameter counts without allocating (jax.eval_shape): total, embedding (input + untied output), non-embedding."""
    abstract = nnx.eval_shape(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)))
    leaves = jax.tree.leaves(nnx.state(abstract, nnx.Param))
    total = sum(int(x.size) for x in leaves)
    emb = cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_word_embeddings else 2)
    return {"total": total, "embedding": emb, "non_embedding": total - emb}
