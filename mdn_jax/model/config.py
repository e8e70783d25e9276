"""Model configuration: one dataclass that reads the authors' JSON configs (flame/configs/*.json) directly.

Keys are the authors' names (`hidden_size`, `num_heads`, `head_dim`, `expand_v`, `attn`, ...) plus a few of
ours for the JAX side (`dtype`, `param_dtype`, `logits_dtype`, `remat`, `chunk_size`, `implementation`).
`model_type` picks the mixer of the non-attention layers:

* ``"momentum_deltanet"`` -- MDN layers (spec 5), softmax attention at ``attn["layers"]`` (hybrid);
* ``"gated_deltanet"``    -- Gated DeltaNet layers (the mu = 0 baseline), hybrid in the same way;
* ``"transformer"``       -- softmax attention in every layer (heads from ``num_heads``/``num_kv_heads``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

MODEL_TYPES = ("momentum_deltanet", "gated_deltanet", "transformer")

# Keys of the authors' configs that do not change the math here; accepted and ignored.
IGNORED_KEYS = frozenset({
    "attn_mode",            # 'chunk'/'fused_recurrent' kernel choice of the torch layer
    "fuse_cross_entropy", "fuse_linear_cross_entropy", "fuse_norm", "fuse_swiglu",  # torch kernel fusions
    "use_l2warp",           # a loss-side trick of FLA's trainer, not part of the model
    "use_cache",            # HF generation flag
    "architectures", "transformers_version", "torch_dtype",  # HF boilerplate in saved configs
    "window_size",          # transformer sliding window: only None is supported (checked below)
    "qk_norm",              # transformer qk-norm: only False is supported (checked below)
    "elementwise_affine", "attn_implementation",
})

_DTYPES = ("float32", "bfloat16", "float16", "float64")


@dataclasses.dataclass(frozen=True)
class AttnConfig:
    """Softmax attention layers of a hybrid model (the authors' ``attn`` block)."""

    layers: tuple[int, ...]
    num_heads: int
    num_kv_heads: int | None = None  # None -> num_heads
    qkv_bias: bool = False
    rope_theta: float = 10000.0
    window_size: int | None = None  # only None supported

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttnConfig:
        if not isinstance(d, dict):
            raise ValueError(f"attn must be a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown keys in attn config: {unknown}; known: {sorted(known)}")
        for key in ("layers", "num_heads"):
            if key not in d:
                raise ValueError(f"attn.{key} is required for hybrid attention layers")
        d = dict(d)
        d["layers"] = tuple(int(i) for i in d["layers"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        return d


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Language-model configuration (authors' key names; see module docstring)."""

    model_type: str = "momentum_deltanet"
    vocab_size: int = 32000
    hidden_size: int = 2048
    num_hidden_layers: int = 21
    # linear-attention mixer (MDN / GDN); also attention heads for model_type == "transformer"
    num_heads: int = 6
    num_v_heads: int | None = None  # None -> num_heads
    head_dim: int = 256
    expand_v: float = 2.0
    conv_size: int = 4
    conv_bias: bool = False
    use_short_conv: bool = True
    use_gate: bool = True
    use_lora_gate: bool = False
    lora_gate_rank: int | None = None
    use_output_correction: bool = True
    use_p_times_alpha: bool = True
    min_log_mu: float | None = -2.0
    tau_factor: float = 1.0
    allow_neg_eigval: bool = False  # GDN: beta in (0, 2); MDN: accepted and ignored (as the authors' layer)
    # hybrid attention
    attn: AttnConfig | None = None
    # transformer baseline (FLA TransformerConfig keys)
    num_kv_heads: int | None = None
    rope_theta: float = 10000.0
    qkv_bias: bool = False
    max_position_embeddings: int = 2048
    # MLP / norms / embeddings
    hidden_ratio: float | None = 4
    intermediate_size: int | None = None
    hidden_act: str = "swish"
    norm_eps: float = 1e-6
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    # JAX side (ours)
    dtype: str = "float32"         # compute dtype of activations
    param_dtype: str = "float32"   # storage dtype of parameters
    logits_dtype: str = "float32"  # dtype of the returned logits
    remat: bool = False            # rematerialise each block in the backward pass
    scan_layers: bool = False      # run each run of identical blocks as one lax.scan (compiled once, not per layer)
    chunk_size: int = 64
    implementation: str | None = None  # op implementation: None (default for the backend), 'xla', 'scan', 'pallas'

    def __post_init__(self):
        if isinstance(self.attn, dict):
            object.__setattr__(self, "attn", AttnConfig.from_dict(self.attn))
        self.validate()

    # ---- derived sizes --------------------------------------------------------------------------
    @property
    def n_v_heads(self) -> int:
        return self.num_heads if self.num_v_heads is None else self.num_v_heads

    @property
    def head_v_dim(self) -> int:
        return int(self.head_dim * self.expand_v)

    @property
    def key_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def value_dim(self) -> int:
        return self.n_v_heads * self.head_v_dim

    @property
    def mlp_dim(self) -> int:
        """SwiGLU width: `intermediate_size`, else 256 * ceil(int(D * hidden_ratio * 2/3) / 256)."""
        if self.intermediate_size is not None:
            return int(self.intermediate_size)
        inner = int(self.hidden_size * self.hidden_ratio * 2 / 3)
        return 256 * ((inner + 255) // 256)

    @property
    def tau(self) -> float:
        """Temperature of the eta gate: sqrt(D / tau_factor) (spec 5.2)."""
        return math.sqrt(self.hidden_size / self.tau_factor)

    def is_attention_layer(self, i: int) -> bool:
        if self.model_type == "transformer":
            return True
        return self.attn is not None and i in self.attn.layers

    def attention_heads(self) -> tuple[int, int, float, bool]:
        """(num_heads, num_kv_heads, rope_theta, qkv_bias) of the softmax attention layers."""
        if self.model_type == "transformer":
            return (self.num_heads, self.num_kv_heads or self.num_heads, self.rope_theta, self.qkv_bias)
        a = self.attn
        return (a.num_heads, a.num_kv_heads or a.num_heads, a.rope_theta, a.qkv_bias)

    # ---- validation -----------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming the offending field."""
        def bad(field, msg):
            raise ValueError(f"invalid config field `{field}`: {msg}")

        if self.model_type not in MODEL_TYPES:
            bad("model_type", f"{self.model_type!r} not in {MODEL_TYPES}")
        for f in ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads", "head_dim", "conv_size",
                  "chunk_size"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                bad(f, f"must be a positive int, got {v!r}")
        if self.num_v_heads is not None and (self.num_v_heads <= 0 or self.num_v_heads % self.num_heads):
            bad("num_v_heads", f"{self.num_v_heads} must be a positive multiple of num_heads={self.num_heads}")
        if self.expand_v <= 0 or not math.isclose(self.head_dim * self.expand_v, self.head_v_dim, rel_tol=1e-9):
            bad("expand_v", f"head_dim * expand_v = {self.head_dim} * {self.expand_v} = "
                            f"{self.head_dim * self.expand_v} is not an integer value head dim")
        if self.tau_factor < 1:
            bad("tau_factor", f"must be >= 1, got {self.tau_factor}")
        if self.hidden_act not in ("swish", "silu"):
            bad("hidden_act", f"only 'swish'/'silu' (SwiGLU) is supported, got {self.hidden_act!r}")
        if self.intermediate_size is None and self.hidden_ratio is None:
            bad("hidden_ratio", "one of hidden_ratio / intermediate_size must be set")
        if self.chunk_size not in (16, 32, 64):
            bad("chunk_size", f"must be 16, 32 or 64, got {self.chunk_size}")
        for f in ("dtype", "param_dtype", "logits_dtype"):
            if getattr(self, f) not in _DTYPES:
                bad(f, f"{getattr(self, f)!r} not in {_DTYPES}")
        if self.use_lora_gate and self.lora_gate_rank is not None and self.lora_gate_rank <= 0:
            bad("lora_gate_rank", f"must be positive, got {self.lora_gate_rank}")
        if self.model_type == "transformer":
            if self.attn is not None:
                bad("attn", "a transformer has attention in every layer; leave `attn` unset")
            self._check_heads("num_heads", self.num_heads, self.num_kv_heads or self.num_heads)
        if self.attn is not None:
            a = self.attn
            out = [i for i in a.layers if not 0 <= i < self.num_hidden_layers]
            if out:
                bad("attn.layers", f"indices {out} out of range for num_hidden_layers={self.num_hidden_layers}")
            if len(set(a.layers)) != len(a.layers):
                bad("attn.layers", f"duplicate indices in {list(a.layers)}")
            if a.window_size is not None:
                bad("attn.window_size", "sliding-window attention is not supported")
            self._check_heads("attn.num_heads", a.num_heads, a.num_kv_heads or a.num_heads)

    def _check_heads(self, field, nh, nkv):
        if nh <= 0 or self.hidden_size % nh:
            raise ValueError(f"invalid config field `{field}`: hidden_size={self.hidden_size} not divisible by {nh}")
        if nkv <= 0 or nh % nkv:
            raise ValueError(f"invalid config field `{field}`: num_heads={nh} not a multiple of num_kv_heads={nkv}")

    # ---- I/O ------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides) -> ModelConfig:
        """Build from the authors' key names; unknown keys raise, IGNORED_KEYS are dropped."""
        d = {**d, **overrides}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in d if k not in known and k not in IGNORED_KEYS)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; accepted: {sorted(known)}; "
                             f"ignored: {sorted(IGNORED_KEYS)}")
        if d.get("window_size") is not None:
            raise ValueError("invalid config field `window_size`: sliding-window attention is not supported")
        if d.get("qk_norm"):
            raise ValueError("invalid config field `qk_norm`: qk-norm attention is not supported")
        kwargs = {k: v for k, v in d.items() if k in known}
        if kwargs.get("attn") is not None:
            kwargs["attn"] = AttnConfig.from_dict(kwargs["attn"])
        for f in ("expand_v", "tau_factor", "rope_theta", "norm_eps", "initializer_range"):
            if f in kwargs and isinstance(kwargs[f], int) and not isinstance(kwargs[f], bool):
                kwargs[f] = float(kwargs[f])
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | os.PathLike, **overrides) -> ModelConfig:
        with open(path) as f:
            return cls.from_dict(json.load(f), **overrides)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["attn"] = self.attn.to_dict() if self.attn is not None else None
        return d

    def to_json(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)


CONFIG_DIR = Path(__file__).parent / "configs"


def available_configs() -> list[str]:
    """Names of the shipped configs (files in mdn_jax/model/configs/)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_config(name_or_path: str | os.PathLike, **overrides) -> ModelConfig:
    """Load a shipped config by name (e.g. 'momentum_deltanet_400M', 'tiny_mdn') or a JSON file path."""
    p = Path(name_or_path)
    if p.suffix == ".json" and p.exists():
        return ModelConfig.from_json(p, **overrides)
    cand = CONFIG_DIR / f"{name_or_path}.json"
    if cand.exists():
        return ModelConfig.from_json(cand, **overrides)
    raise FileNotFoundError(f"no config {name_or_path!r}: not a JSON file and not one of {available_configs()}")
