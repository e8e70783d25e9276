"""Linear-attention token mixers: the Momentum DeltaNet layer (spec 5) and the Gated DeltaNet baseline.

Both share the same skeleton (`_DeltaMixer`):

    q, k, v = silu(shortconv(q_proj x)), silu(shortconv(k_proj x)), silu(shortconv(v_proj x))
    gates   = gate map of x (float32, per value head)
    o       = delta-rule operator(q, k, v, gates)          (chunked; one recurrent step when decoding)
    y       = o_proj(flatten(GatedRMSNorm(o, g_proj x)))

and differ only in the gate map and the operator (`momentum_delta_rule` vs its mu = 0 case
`gated_delta_rule`). Shapes: B batch, T time, D hidden, H key heads of dim K, HV value heads of dim V.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mdn_jax.model.conv import ShortConv
from mdn_jax.model.norms import GatedRMSNorm, RMSNorm
from mdn_jax.model.params import NoDecayParam, dt_bias_init, linear, log_uniform_init, param
from mdn_jax.ops import gated_delta_rule, momentum_delta_rule, momentum_delta_rule_step


class DeltaCache(NamedTuple):
    """Decode cache of one MDN/GDN layer.

    conv: (q, k, v) short-conv states, each [B, W-1, channels] (None without short convs);
    S: [B, HV, K, V] float32; M: [B, HV, K, V] float32 for MDN, None for GDN.
    """

    conv: tuple[jax.Array, jax.Array, jax.Array] | None
    S: jax.Array
    M: jax.Array | None


class MDNGates(NamedTuple):
    """Per-token, per-value-head gates, float32 [B, T, HV] (spec 5.3)."""

    log_alpha: jax.Array
    log_mu: jax.Array
    beta: jax.Array
    eta: jax.Array


class _DeltaMixer(nnx.Module):
    """Projections, short convolutions and gated output norm shared by MDN and GDN (spec 5.1)."""

    gate_activation = "sigmoid"

    def __init__(self, hidden_size: int, *, num_heads: int, head_dim: int, expand_v: float = 2.0,
                 num_v_heads: int | None = None, use_gate: bool = True, use_lora_gate: bool = False,
                 lora_gate_rank: int | None = None, use_short_conv: bool = True, conv_size: int = 4,
                 conv_bias: bool = False, norm_eps: float = 1e-6, initializer_range: float = 0.02,
                 chunk_size: int = 64, implementation: str | None = None, dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        HV = num_heads if num_v_heads is None else num_v_heads
        if HV % num_heads:
            raise ValueError(f"num_v_heads={HV} must be a multiple of num_heads={num_heads}")
        V = int(head_dim * expand_v)
        if V != head_dim * expand_v:
            raise ValueError(f"expand_v={expand_v} gives a non-integer value head dim {head_dim * expand_v}")
        self.hidden_size, self.num_heads, self.num_v_heads = hidden_size, num_heads, HV
        self.head_k_dim, self.head_v_dim = head_dim, V
        self.key_dim, self.value_dim = num_heads * head_dim, HV * V
        self.use_gate, self.use_lora_gate, self.use_short_conv = use_gate, use_lora_gate, use_short_conv
        self.conv_size = conv_size
        self.chunk_size, self.implementation = chunk_size, implementation
        self.dtype = dtype
        std = initializer_range
        kw = dict(std=std, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.q_proj = linear(hidden_size, self.key_dim, ("embed", "heads"), **kw)
        self.k_proj = linear(hidden_size, self.key_dim, ("embed", "heads"), **kw)
        self.v_proj = linear(hidden_size, self.value_dim, ("embed", "heads"), **kw)
        self.a_proj = linear(hidden_size, HV, ("embed", "heads"), **kw)
        self.b_proj = linear(hidden_size, HV, ("embed", "heads"), **kw)
        if use_short_conv:
            ckw = dict(width=conv_size, use_bias=conv_bias, std=std, rngs=rngs, param_dtype=param_dtype)
            self.q_conv1d = ShortConv(self.key_dim, **ckw)
            self.k_conv1d = ShortConv(self.key_dim, **ckw)
            self.v_conv1d = ShortConv(self.value_dim, **ckw)
        if use_gate:
            if use_lora_gate:  # PyTorch: g_proj = Sequential(Linear(D, r), Linear(r, HV*V, bias=True))
                rank = V if lora_gate_rank is None else lora_gate_rank
                self.g_proj_a = linear(hidden_size, rank, ("embed", None), **kw)
                self.g_proj_b = linear(rank, self.value_dim, (None, "heads"), use_bias=True, **kw)
            else:
                self.g_proj = linear(hidden_size, self.value_dim, ("embed", "heads"), **kw)
            self.o_norm = GatedRMSNorm(V, eps=norm_eps, activation=self.gate_activation, param_dtype=param_dtype)
        else:
            self.o_norm = RMSNorm(V, eps=norm_eps, axis_name="kv", param_dtype=param_dtype)
        self.o_proj = linear(self.value_dim, hidden_size, ("heads", "embed"), **kw)

    # ---- pieces -----------------------------------------------------------------------------------
    def _qkv(self, x, conv_state, segment_ids):
        """x [B,T,D] -> q, k [B,T,H,K], v [B,T,HV,V] (after conv+SiLU) and the new conv states."""
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.use_short_conv:
            cq, ck, cv = conv_state if conv_state is not None else (None, None, None)
            q, cq = self.q_conv1d(q, state=cq, segment_ids=segment_ids)
            k, ck = self.k_conv1d(k, state=ck, segment_ids=segment_ids)
            v, cv = self.v_conv1d(v, state=cv, segment_ids=segment_ids)
            new_conv = (cq, ck, cv)
        else:
            q, k, v = jax.nn.silu(q), jax.nn.silu(k), jax.nn.silu(v)
            new_conv = None
        B, T = x.shape[:2]
        q = q.reshape(B, T, self.num_heads, self.head_k_dim)
        k = k.reshape(B, T, self.num_heads, self.head_k_dim)
        v = v.reshape(B, T, self.num_v_heads, self.head_v_dim)
        return q, k, v, new_conv

    def _output(self, o, x):
        """o [B,T,HV,V], x [B,T,D] -> y [B,T,D]."""
        B, T = x.shape[:2]
        o = o.astype(self.dtype)
        if self.use_gate:
            g = self.g_proj_b(self.g_proj_a(x)) if self.use_lora_gate else self.g_proj(x)
            o = self.o_norm(o, g.reshape(B, T, self.num_v_heads, self.head_v_dim))
        else:
            o = self.o_norm(o)
        return self.o_proj(o.reshape(B, T, self.value_dim))

    def init_cache(self, batch: int, conv_dtype=jnp.float32) -> DeltaCache:
        """Empty decode cache for this layer (see DeltaCache)."""
        conv = None
        if self.use_short_conv:
            conv = (self.q_conv1d.init_state(batch, conv_dtype), self.k_conv1d.init_state(batch, conv_dtype),
                    self.v_conv1d.init_state(batch, conv_dtype))
        shape = (batch, self.num_v_heads, self.head_k_dim, self.head_v_dim)
        return DeltaCache(conv, jnp.zeros(shape, jnp.float32), self._empty_momentum(shape))

    def _empty_momentum(self, shape):
        return jnp.zeros(shape, jnp.float32)

    def _check_call(self, x, segment_ids, cache):
        if x.ndim != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must be [B, T, {self.hidden_size}], got {x.shape}")
        if segment_ids is not None and cache is not None:
            raise ValueError("segment_ids (packed documents) and a decode cache cannot be combined")


class MomentumDeltaNet(_DeltaMixer):
    """Momentum DeltaNet token mixer (spec 5.1-5.5).

    __call__(x [B,T,D], *, segment_ids [B,T] | None, cache DeltaCache | None)
      -> y [B,T,D]                  (cache is None)
      -> (y [B,T,D], DeltaCache)    (cache given: prefill for T > 1, one recurrent step for T == 1)

    Per-head parameters are sized [HV] (spec 5.2 note) and are `NoDecayParam`s.
    """

    gate_activation = "sigmoid"

    def __init__(self, hidden_size: int, *, num_heads: int, head_dim: int, expand_v: float = 2.0,
                 num_v_heads: int | None = None, use_output_correction: bool = True,
                 use_p_times_alpha: bool = True, min_log_mu: float | None = -2.0, tau_factor: float = 1.0,
                 rngs: nnx.Rngs, **kwargs):
        super().__init__(hidden_size, num_heads=num_heads, head_dim=head_dim, expand_v=expand_v,
                         num_v_heads=num_v_heads, rngs=rngs, **kwargs)
        HV = self.num_v_heads
        std = kwargs.get("initializer_range", 0.02)
        kw = dict(std=std, rngs=rngs, dtype=self.dtype, param_dtype=kwargs.get("param_dtype", jnp.float32))
        self.m_proj = linear(hidden_size, HV, ("embed", "heads"), **kw)
        self.e_proj = linear(hidden_size, HV, ("embed", "heads"), **kw)
        self.use_output_correction = use_output_correction
        self.use_p_times_alpha = use_p_times_alpha
        self.min_log_mu = min_log_mu
        self.tau = float((hidden_size / tau_factor) ** 0.5)

        def nd(v):
            return param(v, ("heads",), NoDecayParam)

        self.A_log = nd(log_uniform_init(rngs.params(), (HV,), 0.0, 16.0))
        self.Mu_log = nd(log_uniform_init(rngs.params(), (HV,), 0.0, 16.0))
        dt = dt_bias_init(rngs.params(), (HV,))
        self.dt_bias = nd(dt)
        self.mu_bias = nd(jnp.copy(dt))  # same initial values, an independent parameter (its own buffer)
        self.log_factor = nd(log_uniform_init(rngs.params(), (HV,), 0.0, 4.0))
        if use_output_correction:
            self.D_log = nd(log_uniform_init(rngs.params(), (HV,), 0.0, 1.0))

    def gates(self, x: jax.Array) -> MDNGates:
        """Gate map (spec 5.3), float32. x: [B,T,D] (or [B,D]) -> MDNGates of [B,T,HV] (or [B,HV])."""
        f32 = jnp.float32
        a, b = self.a_proj(x).astype(f32), self.b_proj(x).astype(f32)
        m, e = self.m_proj(x).astype(f32), self.e_proj(x).astype(f32) / self.tau
        log_mu = -jnp.exp(self.Mu_log[...].astype(f32)) * jax.nn.softplus(m + self.mu_bias[...])
        log_alpha = -jnp.exp(self.A_log[...].astype(f32)) * jax.nn.softplus(a + self.dt_bias[...])
        eta = 1.0 + jnp.tanh(e)
        beta = jax.nn.sigmoid(b)
        theta = jnp.arctan(eta * jnp.exp(self.log_factor[...].astype(f32)))
        beta = jnp.sin(theta) ** 2 * beta
        log_alpha = jnp.log(jnp.cos(theta) ** 2) + log_alpha
        if self.min_log_mu is not None:
            log_mu = jnp.maximum(log_mu, self.min_log_mu)
        return MDNGates(log_alpha, log_mu, beta, eta)

    def _correct_q(self, q, k):
        """Output correction q - exp(D_log) * k per value head; repeats q, k to HV heads when grouped."""
        if not self.use_output_correction:
            return q, k
        group = self.num_v_heads // self.num_heads
        if group > 1:
            q, k = jnp.repeat(q, group, axis=-2), jnp.repeat(k, group, axis=-2)
        d = jnp.exp(self.D_log[...].astype(jnp.float32))
        return (q.astype(jnp.float32) - d[:, None] * k.astype(jnp.float32)).astype(k.dtype), k

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None, cache: DeltaCache | None = None):
        self._check_call(x, segment_ids, cache)
        q, k, v, new_conv = self._qkv(x, cache.conv if cache is not None else None, segment_ids)
        q, k = self._correct_q(q, k)
        g = self.gates(x)
        opts = dict(l2norm_qk=True, p_times_alpha=self.use_p_times_alpha)
        if cache is not None and x.shape[1] == 1:  # one decode step
            o, (S, M) = momentum_delta_rule_step(
                q[:, 0], k[:, 0], v[:, 0], *(t[:, 0] for t in g), state=(cache.S, cache.M), **opts)
            o = o[:, None]
        else:
            init = (cache.S, cache.M) if cache is not None else None
            o, final = momentum_delta_rule(
                q, k, v, *g, initial_state=init, output_final_state=cache is not None, segment_ids=segment_ids,
                chunk_size=self.chunk_size, implementation=self.implementation, **opts)
            S, M = final if final is not None else (None, None)
        y = self._output(o, x)
        if cache is None:
            return y
        return y, DeltaCache(new_conv, S, M)


class GatedDeltaNet(_DeltaMixer):
    """Gated DeltaNet token mixer (FLA `GatedDeltaNet`): the mu = 0 baseline sharing the MDN operator.

    Gates: log_alpha = -exp(A_log) softplus(a + dt_bias), beta = sigmoid(b) (x2 if allow_neg_eigval);
    output gate activation swish (FLA default). Same call/cache contract as `MomentumDeltaNet`
    (DeltaCache with M = None).
    """

    gate_activation = "swish"

    def __init__(self, hidden_size: int, *, num_heads: int, head_dim: int, allow_neg_eigval: bool = False,
                 rngs: nnx.Rngs, **kwargs):
        super().__init__(hidden_size, num_heads=num_heads, head_dim=head_dim, rngs=rngs, **kwargs)
        HV = self.num_v_heads
        self.allow_neg_eigval = allow_neg_eigval
        self.A_log = param(log_uniform_init(rngs.params(), (HV,), 0.0, 16.0), ("heads",), NoDecayParam)
        self.dt_bias = param(dt_bias_init(rngs.params(), (HV,)), ("heads",), NoDecayParam)

    def gates(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [B,T,D] -> (log_alpha, beta), float32 [B,T,HV]."""
        f32 = jnp.float32
        beta = jax.nn.sigmoid(self.b_proj(x).astype(f32))
        if self.allow_neg_eigval:
            beta = 2.0 * beta
        a = self.a_proj(x).astype(f32)
        log_alpha = -jnp.exp(self.A_log[...].astype(f32)) * jax.nn.softplus(a + self.dt_bias[...])
        return log_alpha, beta

    def _empty_momentum(self, shape):
        return None

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None, cache: DeltaCache | None = None):
        self._check_call(x, segment_ids, cache)
        q, k, v, new_conv = self._qkv(x, cache.conv if cache is not None else None, segment_ids)
        log_alpha, beta = self.gates(x)
        if cache is not None and x.shape[1] == 1:
            la, b = log_alpha[:, 0], beta[:, 0]
            o, (S, _) = momentum_delta_rule_step(
                q[:, 0], k[:, 0], v[:, 0], la, jnp.full_like(la, -jnp.inf), b, jnp.ones_like(b),
                state=(cache.S, jnp.zeros_like(cache.S)), l2norm_qk=True, p_times_alpha=True)
            o = o[:, None]
        else:
            o, S = gated_delta_rule(
                q, k, v, log_alpha, beta, initial_state=cache.S if cache is not None else None,
                output_final_state=cache is not None, segment_ids=segment_ids, chunk_size=self.chunk_size,
                implementation=self.implementation)
        y = self._output(o, x)
        if cache is None:
            return y
        return y, DeltaCache(new_conv, S, None)
