"""Multi-query associative recall (MQAR), the synthetic recall task of Zoology (Arora et al. 2023).

Layout of one example of length T with n key-value pairs (as Zoology's `multiquery_ar`):

    positions 0 .. 2n-1 : k_1 v_1 k_2 v_2 ... k_n v_n        (keys distinct, from [1, vocab/2);
                                                               values distinct, from [vocab/2, vocab))
    positions 2n .. T-1 : the n keys again, in random order, each at an even offset 2n + 2g (gap g drawn
                          without replacement with probability ~ g^(power_a - 1), so queries cluster near the
                          context, as in Zoology); every other position holds a random token (or 0).

The model reads `inputs` causally and must output, at each query key position, the value bound to that key:
`targets[t]` is that value and `mask[t]` is True exactly there (n positions per row). Everything is drawn from
one `numpy.random.Generator(seed)`, so a (config, seed) pair always gives the same data; no downloads.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class MQARConfig:
    """vocab_size V, num_kv_pairs n, seq_len T; needs n <= V/2 - 1 and T >= 4n."""

    vocab_size: int = 8192
    num_kv_pairs: int = 8
    seq_len: int = 128
    power_a: float = 0.01
    random_non_queries: bool = True

    def validate(self) -> MQARConfig:
        V, n, T = self.vocab_size, self.num_kv_pairs, self.seq_len
        if n <= 0 or V <= 0 or T <= 0:
            raise ValueError(f"vocab_size, num_kv_pairs and seq_len must be positive, got {V}, {n}, {T}")
        if n > V // 2 - 1 or n > V - V // 2:
            raise ValueError(f"num_kv_pairs={n} needs vocab_size >= {2 * n + 2} (distinct keys and values), got {V}")
        if (T - 2 * n) // 2 < n:
            raise ValueError(f"seq_len={T} too short for {n} pairs and {n} queries (needs >= {4 * n})")
        if not 0 < self.power_a <= 1:
            raise ValueError(f"power_a must be in (0, 1], got {self.power_a}")
        return self


def _choose_distinct(rng: np.random.Generator, n_rows: int, low: int, high: int, k: int) -> np.ndarray:
    """[n_rows, k] ints from [low, high), distinct within a row, uniform over ordered k-tuples.

    When k is small against the range (k^2 <= 2 (high - low): a row has a repeat with probability < ~1/2),
    i.i.d. draws with the rows that hold a repeat drawn again (rejection sampling: uniform over tuples without
    repetition), O(k) per row; otherwise the first k of a random permutation (argsort of uniform noise),
    O(range log range) per row, which was 25 ms per batch of 64 for vocab 8192 (the MQAR train loop's bottleneck).
    """
    n = high - low
    if k * k > 2 * n:
        return np.argsort(rng.random((n_rows, n)), axis=1)[:, :k] + low
    out = rng.integers(0, n, size=(n_rows, k))
    redo = np.arange(n_rows)
    while True:
        srt = np.sort(out[redo], axis=1)
        redo = redo[(srt[:, 1:] == srt[:, :-1]).any(axis=1)]
        if redo.size == 0:
            return out + low
        out[redo] = rng.integers(0, n, size=(redo.size, k))


def mqar_batch(cfg: MQARConfig, num_examples: int, seed: int) -> dict[str, np.ndarray]:
    """Generate MQAR examples.

    Returns {"inputs": [N, T] int32, "targets": [N, T] int32 (0 where not a query), "mask": [N, T] bool
    (True at the n query positions of each row), "keys", "values": [N, n] int32 (the bound pairs)}.
    """
    cfg.validate()
    V, n, T = cfg.vocab_size, cfg.num_kv_pairs, cfg.seq_len
    N = int(num_examples)
    rng = np.random.default_rng(seed)
    keys = _choose_distinct(rng, N, 1, V // 2, n)
    values = _choose_distinct(rng, N, V // 2, V, n)
    ctx = 2 * n
    space = (T - ctx) // 2
    # weighted sampling without replacement of n gaps from [0, space): top-n of log p + Gumbel noise
    logp = np.log(cfg.power_a) + (cfg.power_a - 1.0) * np.log(np.arange(1, space + 1))
    gumbel = -np.log(-np.log(rng.random((N, space)) + 1e-300) + 1e-300)
    gaps = np.argsort(-(logp + gumbel), axis=1)[:, :n]
    inputs = np.zeros((N, T), np.int64)
    if cfg.random_non_queries:
        inputs[:] = rng.integers(0, V, size=(N, T))
    inputs[:, 0:ctx:2], inputs[:, 1:ctx:2] = keys, values
    qpos = ctx + 2 * gaps
    rows = np.arange(N)[:, None]
    order = rng.permutation(n)  # which pair each query gap asks for (gaps are already in random order)
    inputs[rows, qpos] = keys[:, order]
    targets = np.zeros((N, T), np.int64)
    targets[rows, qpos] = values[:, order]
    mask = np.zeros((N, T), bool)
    mask[rows, qpos] = True
    return {"inputs": inputs.astype(np.int32), "targets": targets.astype(np.int32), "mask": mask,
            "keys": keys.astype(np.int32), "values": values.astype(np.int32)}
