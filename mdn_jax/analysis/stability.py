"""Stability of the learned momentum recurrence (spec section 6), measured on real inputs.

Along the key direction one MDN step acts on (s, m) (state and momentum components) as the 2x2 matrix

    A_t = [[alpha - beta h, -beta mu],      h = a eta,  a = alpha (use_p_times_alpha, default) or 1 (plain mode)
           [h,               mu     ]]      characteristic polynomial  l^2 - (alpha + mu - beta h) l + alpha mu

(orthogonal to the key its eigenvalues are alpha and mu). By the Jury criterion its spectral radius is < 1 iff

    alpha mu < 1,   (1 - alpha)(1 - mu) + beta h > 0,   (1 + alpha)(1 + mu) - beta h > 0,

which for alpha, mu in [0, 1) is the spec's `0 <= beta h < (1 + alpha)(1 + mu)` up to the lower bound
(-(1-alpha)(1-mu) < beta h). The margin reported is `(1 + alpha)(1 + mu) - beta h`. A GDN layer is the case
mu = 0, eta = 1, h = alpha (its step is alpha (1 - beta) along the key).

`run_stability` restores a run, captures the input of every delta-rule layer (the blocks are run one by one:
embedding, then per block `attn_norm(x)` is recorded before `x = block(x)`; no model change), evaluates the layer's
own gate map `gates(x)` on it, and reports per layer and head: max |eigenvalue|, min margin, whether the Jury
condition holds on every token and whether it agrees with the direct eigenvalue test.
"""

from __future__ import annotations

import math

import numpy as np

from mdn_jax.errors import UserError


# ---- the 2x2 step ------------------------------------------------------------------------------------
def step_matrix(alpha, mu, beta, h) -> np.ndarray:
    """[..., 2, 2] float64 per-step matrices from gate arrays of one shape [...]."""
    alpha, mu, beta, h = (np.asarray(x, np.float64) for x in (alpha, mu, beta, h))
    top = np.stack([alpha - beta * h, -beta * mu], axis=-1)
    bot = np.stack([h, mu], axis=-1)
    return np.stack([top, bot], axis=-2)


def spectral_radius(alpha, mu, beta, h) -> np.ndarray:
    """max |eigenvalue| of `step_matrix` (numpy eigvals, float64), shape [...]."""
    A = step_matrix(alpha, mu, beta, h)
    if A.size == 0:
        return np.zeros(A.shape[:-2])
    return np.max(np.abs(np.linalg.eigvals(A)), axis=-1)


def jury_stable(alpha, mu, beta, h) -> np.ndarray:
    """Jury criterion for l^2 - (alpha + mu - beta h) l + alpha mu: True iff both roots lie inside the unit circle."""
    alpha, mu, beta, h = (np.asarray(x, np.float64) for x in (alpha, mu, beta, h))
    bh = beta * h
    return (np.abs(alpha * mu) < 1) & ((1 - alpha) * (1 - mu) + bh > 0) & ((1 + alpha) * (1 + mu) - bh > 0)


def margin(alpha, mu, beta, h) -> np.ndarray:
    """(1 + alpha)(1 + mu) - beta h: positive when the upper Jury bound holds."""
    return (1 + np.asarray(alpha, np.float64)) * (1 + np.asarray(mu, np.float64)) - np.asarray(beta) * np.asarray(h)


# ---- gates of a model on real inputs -----------------------------------------------------------------------
def delta_layers(model) -> list[tuple[int, str, bool]]:
    """[(layer index, 'mdn' | 'gdn', p_times_alpha)] for the delta-rule layers of a CausalLM."""
    from mdn_jax.model.delta_mixers import GatedDeltaNet, MomentumDeltaNet

    out = []
    for i, block in enumerate(model.layers):
        if isinstance(block.attn, MomentumDeltaNet):
            out.append((i, "mdn", bool(block.attn.use_p_times_alpha)))
        elif isinstance(block.attn, GatedDeltaNet):
            out.append((i, "gdn", True))
    return out


def layer_gates(model, tokens, segment_ids=None) -> dict[int, tuple]:
    """{layer: (log_alpha, log_mu, beta, eta)}, each [B, T, HV] float32, of every delta-rule layer.

    tokens, segment_ids: [B, T] int32. Runs the model block by block (the forward pass of `CausalLM.__call__`
    without remat) and applies each layer's gate map to its normalised input. GDN layers get log_mu = -inf, eta = 1.
    """
    import jax.numpy as jnp

    from mdn_jax.model.delta_mixers import GatedDeltaNet, MomentumDeltaNet

    x = model.embeddings(tokens).astype(jnp.dtype(model.config.dtype))
    out = {}
    for i, block in enumerate(model.layers):
        if isinstance(block.attn, MomentumDeltaNet):
            out[i] = tuple(block.attn.gates(block.attn_norm(x)))
        elif isinstance(block.attn, GatedDeltaNet):
            la, beta = block.attn.gates(block.attn_norm(x))
            out[i] = (la, jnp.full_like(la, -jnp.inf), beta, jnp.ones_like(beta))
        x = block(x, segment_ids=segment_ids)
    return out


def gate_terms(log_alpha, log_mu, beta, eta, p_times_alpha: bool = True) -> dict[str, np.ndarray]:
    """alpha, mu, beta, h (float64) from the gate arrays; h = alpha eta (p_times_alpha) else eta."""
    alpha = np.exp(np.asarray(log_alpha, np.float64))
    mu = np.exp(np.asarray(log_mu, np.float64))
    eta = np.asarray(eta, np.float64)
    return {"alpha": alpha, "mu": mu, "beta": np.asarray(beta, np.float64), "h": alpha * eta if p_times_alpha else eta}


def analyse_terms(t: dict[str, np.ndarray], valid: np.ndarray) -> dict:
    """Per-head statistics of gate terms [B, T, HV] over the tokens where `valid` [B, T] is True."""
    heads = []
    args = (t["alpha"], t["mu"], t["beta"], t["h"])
    rho, jury, marg = spectral_radius(*args), jury_stable(*args), margin(*args)
    for j in range(t["alpha"].shape[-1]):
        r, jy, mg = rho[..., j][valid], jury[..., j][valid], marg[..., j][valid]
        bh = (t["beta"][..., j] * t["h"][..., j])[valid]
        heads.append({
            "head": j, "tokens": int(r.size), "max_modulus": float(r.max()), "mean_modulus": float(r.mean()),
            "min_margin": float(mg.min()), "max_beta_h": float(bh.max()),
            "mean_alpha": float(t["alpha"][..., j][valid].mean()), "mean_mu": float(t["mu"][..., j][valid].mean()),
            "jury_holds": bool(jy.all()), "eig_stable": bool((r < 1).all()),
            "jury_agrees_with_eigenvalues": bool((jy == (r < 1)).all()),
        })
    return {"heads": heads, "max_modulus": max(h["max_modulus"] for h in heads),
            "min_margin": min(h["min_margin"] for h in heads), "jury_holds": all(h["jury_holds"] for h in heads),
            "jury_agrees_with_eigenvalues": all(h["jury_agrees_with_eigenvalues"] for h in heads),
            "_rho": rho[valid]}


def run_stability(checkpoint: str, data: str | None = None, seq_len: int | None = None, batch_size: int = 4,
                  batches: int = 1, plot: str | None = None) -> dict:
    """The `mdn-jax stability` command as a function: a JSON-able report (see module docstring)."""
    import jax

    from mdn_jax.data.pipeline import make_pipeline
    from mdn_jax.data.sources import load_source
    from mdn_jax.evaluation.lm_eval import eval_source
    from mdn_jax.evaluation.restore import load_run

    if (seq_len is not None and seq_len <= 0) or batch_size <= 0 or batches <= 0:
        raise UserError("--seq-len, --batch-size and --batches must be positive")
    if data is not None:
        load_source(data)  # a bad path fails before the model is restored
    run = load_run(checkpoint)
    model = run.model()
    if not hasattr(model, "layers"):
        raise UserError("the stability analysis needs an mdn_jax CausalLM (model=<config name>)")
    layers = delta_layers(model)
    if not layers:
        raise UserError("the model has no MDN/GDN layers (a transformer): nothing to analyse")
    T = seq_len or run.cfg.seq_len
    source = eval_source(run, data)
    pipe = make_pipeline(source, run.tokenizer, seq_len=T, batch_size=batch_size, num_epochs=1, shuffle=False,
                         prefetch=0)
    fn = jax.jit(lambda p, tok, seg: layer_gates(run.model(p), tok, seg))
    collected: dict[int, list] = {i: [] for i, _, _ in layers}
    valid_all = []
    try:
        for _ in range(batches):
            try:
                b = next(pipe)
            except StopIteration:
                break
            g = jax.device_get(fn(run.params, b["tokens"], b["segment_ids"]))
            for i, _, _ in layers:
                collected[i].append(g[i])
            valid_all.append(b["segment_ids"] > 0)
    finally:
        pipe.close()
    if not valid_all:
        raise UserError("no input: the data is empty")
    valid = np.concatenate(valid_all)
    report = {"checkpoint": run.directory, "step": run.step, "tokens": int(valid.sum()), "seq_len": T, "layers": []}
    rhos = {}
    for i, kind, pta in layers:
        parts = [np.concatenate([c[k] for c in collected[i]]) for k in range(4)]
        stats = analyse_terms(gate_terms(*parts, p_times_alpha=pta), valid)
        rhos[i] = stats.pop("_rho")
        report["layers"].append({"layer": i, "kind": kind, "p_times_alpha": pta, **stats})
    report["max_modulus"] = max(lay["max_modulus"] for lay in report["layers"])
    report["min_margin"] = min(lay["min_margin"] for lay in report["layers"])
    report["jury_holds"] = all(lay["jury_holds"] for lay in report["layers"])
    report["jury_agrees_with_eigenvalues"] = all(lay["jury_agrees_with_eigenvalues"] for lay in report["layers"])
    if plot:
        report["plot"] = plot_histogram(rhos, plot)
    return report


def plot_histogram(rhos: dict[int, np.ndarray], path: str) -> str | None:
    """Histogram PNG of per-token spectral radii per layer; returns the path, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed (pip install 'mdn-jax[experiments]'); no plot written")
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, r in rhos.items():
        ax.hist(r.ravel(), bins=60, range=(0, 1.05), histtype="step", label=f"layer {i}")
    ax.axvline(1.0, color="k", ls="--", lw=0.8)
    ax.set_xlabel("spectral radius of the per-step 2x2 matrix")
    ax.set_ylabel("tokens x heads")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_report(rep: dict) -> str:
    """Human-readable table of a `run_stability` report."""
    lines = [f"stability of {rep['checkpoint']} (step {rep['step']}) over {rep['tokens']} tokens",
             f"{'layer':>5} {'kind':>4} {'head':>4} {'max|l|':>8} {'min margin':>10} {'max bh':>7} "
             f"{'mean a':>7} {'mean mu':>7} jury"]
    for lay in rep["layers"]:
        for h in lay["heads"]:
            lines.append(f"{lay['layer']:>5} {lay['kind']:>4} {h['head']:>4} {h['max_modulus']:8.4f} "
                         f"{h['min_margin']:10.4f} {h['max_beta_h']:7.4f} {h['mean_alpha']:7.4f} "
                         f"{h['mean_mu']:7.4f} {'ok' if h['jury_holds'] else 'VIOLATED'}")
    ok = "holds on every token and head" if rep["jury_holds"] else "is VIOLATED somewhere"
    lines.append(f"max |eigenvalue| {rep['max_modulus']:.4f}, min margin {rep['min_margin']:.4f}; "
                 f"the Jury condition {ok}; agrees with the eigenvalue test: {rep['jury_agrees_with_eigenvalues']}")
    if rep.get("plot"):
        lines.append(f"histogram: {rep['plot']}")
    return "\n".join(lines) if math.isfinite(rep["max_modulus"]) else "\n".join(lines + ["non-finite gates!"])
