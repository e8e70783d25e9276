"""Training configuration: one flat dataclass, named presets, JSON files and `key=value` overrides.

`model` names a model config (resolved by `mdn_jax.train.model_api.build_model`); model keys are overridden with
`model.<key>=value` (collected in `model_overrides`). Unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from mdn_jax.errors import UserError

DEFAULT_RULES = {
    # logical axis -> mesh axis (or list of mesh axes, or null): FSDP over the model width, tensor parallel over
    # heads / MLP / vocabulary. A mesh axis is skipped for a dimension it does not divide.
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
    "kv": None,
    "conv": None,
}


@dataclasses.dataclass
class TrainConfig:
    # model
    model: str = "tiny_mdn"               # model config name / JSON path, or "module:factory" (see model_api)
    model_overrides: dict = dataclasses.field(default_factory=dict)
    vocab_multiple: int = 8               # the model's vocab = tokenizer vocab rounded up to this
    # data
    data: str = "shakespeare"             # 'shakespeare', a directory of .txt, a .txt file or a .jsonl file
    text_key: str = "text"
    tokenizer: str = "byte"               # 'byte', 'gpt2' or a path to tokenizer.json
    eval_fraction: float = 0.05
    seq_len: int = 128
    batch_size: int = 16                  # global rows per optimizer step (all micro-batches)
    grad_accum: int = 1                   # micro-batches per step (scan inside the step)
    prefetch: int = 2
    # optimisation
    steps: int = 600                      # schedule length and last step
    stop_at_step: int = 0                 # stop (with a checkpoint) after this step; 0 = run to `steps`
    lr: float = 3e-3
    lr_min_ratio: float = 0.1             # cosine decays to lr * lr_min_ratio
    warmup_steps: int = 20
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-15
    weight_decay: float = 0.1
    no_decay: list = dataclasses.field(default_factory=lambda: ["norm", "bias", "embed"])  # name substrings
    clip_norm: float = 1.0
    # precision
    param_dtype: str = "float32"          # master parameters
    compute_dtype: str = "float32"        # params are cast to this for the forward/backward ('bfloat16' on GPU)
    loss_chunk: int = 2048                # tokens per chunk of the chunked cross-entropy (0: full logits)
    # parallelism
    mesh_data: int = -1                   # -1: all devices not used by fsdp/tensor
    mesh_fsdp: int = 1
    mesh_tensor: int = 1
    sharding_rules: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_RULES))
    # run
    seed: int = 0
    out: str = "runs/default"
    resume: bool = False
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 4
    ckpt_every: int = 100
    keep_checkpoints: int = 3
    async_checkpoint: bool = True
    progress: bool = True                 # tqdm progress bar (else plain lines)
    tensorboard: bool = True
    peak_flops: float = 0.0               # per-device peak FLOP/s for MFU; 0 = from the device kind
    sample_prompt: str = "ROMEO:\n"
    sample_tokens: int = 200
    sample_temperature: float = 0.8      # 0 = greedy
    debug_nan_step: int = -1              # testing: make step N's gradients NaN (it must be skipped)
    profile_steps: str = ""               # "START:END": jax.profiler trace of steps START..END-1 into <out>/profile
    compile_cache: str = ""               # a directory for JAX's persistent compilation cache ("" = none): a rerun
                                          # of the same model and shapes loads its compiled steps from there

    def validate(self) -> TrainConfig:
        pos = ("seq_len", "batch_size", "grad_accum", "steps", "log_every", "ckpt_every", "keep_checkpoints",
               "vocab_multiple")
        for k in pos:
            if int(getattr(self, k)) <= 0:
                raise UserError(f"{k} must be positive, got {getattr(self, k)}")
        if int(self.loss_chunk) < 0:
            raise UserError(f"loss_chunk must be >= 0 (0: full logits), got {self.loss_chunk}")
        if self.batch_size % self.grad_accum:
            raise UserError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")
        if self.profile_steps:
            parse_profile_steps(self.profile_steps)
        for k in ("param_dtype", "compute_dtype"):
            if getattr(self, k) not in ("float32", "bfloat16", "float16"):
                raise UserError(f"{k} must be float32, bfloat16 or float16, got {getattr(self, k)!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    # a tiny MDN on Shakespeare, bytes, a few minutes on 2 CPU cores
    "tiny": {},
    "tiny_transformer": {"model": "tiny_transformer"},
    # the authors' 400M MDN: GPT-2 BPE, seq 4096, bf16 compute (GPU)
    "400M": {"model": "momentum_deltanet_400M", "tokenizer": "gpt2", "seq_len": 4096, "batch_size": 16,
             "lr": 3e-4, "warmup_steps": 200, "steps": 20000, "compute_dtype": "bfloat16", "loss_chunk": 4096,
             "eval_every": 500, "ckpt_every": 500, "sample_prompt": "The"},
}

def parse_profile_steps(text: str) -> tuple[int, int]:
    """'START:END' -> (START, END) with 0 < START < END (steps counted from 1)."""
    try:
        start, end = (int(x) for x in str(text).split(":"))
    except ValueError:
        raise UserError(f"profile_steps must look like START:END (e.g. 20:23), got {text!r}") from None
    if not 0 < start < end:
        raise UserError(f"profile_steps needs 0 < START < END, got {text!r}")
    return start, end


_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        return text


def apply_overrides(d: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge `overrides` into config dict `d`; `model.<k>` keys go to `model_overrides`; unknown keys raise."""
    d = dict(d)
    d["model_overrides"] = dict(d.get("model_overrides", {}))
    for k, v in overrides.items():
        if k.startswith("model."):
            d["model_overrides"][k[len("model."):]] = v
        elif k in _FIELDS:
            d[k] = v
        else:
            raise UserError(f"unknown config key {k!r} (known: {', '.join(sorted(_FIELDS))}; model keys: model.<key>)")
    return d


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['a=1', 'b=x'] -> {'a': 1, 'b': 'x'} (values parsed as JSON when they are JSON)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = _parse_value(v)
    return out


def load_train_config(name_or_path: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A preset name ('tiny', '400M', ...) or a JSON file of TrainConfig keys, then `overrides`."""
    name_or_path = name_or_path or "tiny"
    if name_or_path in PRESETS:
        base = dict(PRESETS[name_or_path])
    elif os.path.isfile(name_or_path):
        try:
            with open(name_or_path) as f:
                base = json.load(f)
        except json.JSONDecodeError as e:
            raise UserError(f"config {name_or_path} is not valid JSON: {e}") from None
        if not isinstance(base, dict):
            raise UserError(f"config {name_or_path} must hold a JSON object")
    else:
        raise UserError(f"unknown config {name_or_path!r}: not a file and not one of {', '.join(PRESETS)}")
    d = apply_overrides({}, base)
    d = apply_overrides(d, overrides or {})
    try:
        cfg = TrainConfig(**d)
    except TypeError as e:
        raise UserError(f"bad config: {e}") from None
    return cfg.validate()
