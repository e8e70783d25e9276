"""Parity of our MomentumDeltaNet layer with FLA's PyTorch layer (GPU, optional dependency).

Needs torch with CUDA and `flash-linear-attention`/`fla-core` 0.6.0 (carry them as wheels to the GPU
machine; see experiments/gpu_run.sh). Random weights go into both layers through `mdn_jax.convert`.
FLA 0.6.0 builds the output norm with its default swish gate, while the authors' layer (and the spec,
section 5.1) uses a sigmoid gate: the torch layer is switched to sigmoid before comparing. FLA's chunk
kernel takes bf16 only, so the torch layer runs in bf16 and ours in float32 on the same bf16-rounded
weights and inputs; the tolerance is bf16's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mdn_jax import convert
from mdn_jax.model.delta_mixers import MomentumDeltaNet

pytestmark = pytest.mark.gpu


def _rel(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    assert np.all(np.isfinite(x))
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def test_layer_matches_fla():
    torch = pytest.importorskip("torch")
    fla_layer = pytest.importorskip("fla.layers.momentum_deltanet")
    if not torch.cuda.is_available() or jax.default_backend() != "gpu":
        pytest.skip("needs a CUDA GPU for both frameworks")
    D, H, K, T, B = 256, 2, 64, 256, 2
    ours = MomentumDeltaNet(D, num_heads=H, head_dim=K, expand_v=2.0, norm_eps=1e-6, rngs=nnx.Rngs(0))
    theirs = fla_layer.MomentumDeltaNet(hidden_size=D, num_heads=H, head_dim=K, expand_v=2.0, norm_eps=1e-6,
                                        mode="chunk").cuda().to(torch.bfloat16)
    theirs.o_norm.activation = "sigmoid"
    bf16 = lambda a: a.astype(jnp.bfloat16).astype(a.dtype)  # noqa: E731
    nnx.update(ours, jax.tree.map(bf16, nnx.state(ours, nnx.Param)))
    state = {k: torch.tensor(np.asarray(v)).cuda().to(torch.bfloat16)
             for k, v in convert.to_torch_state_dict(ours).items()}
    missing, unexpected = theirs.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)

    x = np.asarray(bf16(jnp.asarray(np.random.default_rng(0).standard_normal((B, T, D)), jnp.float32)))
    w = np.random.default_rng(1).standard_normal((B, T, D)).astype(np.float32)
    xt = torch.tensor(x, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    yt = theirs(xt)[0]
    (yt.float() * torch.tensor(w, device="cuda")).sum().backward()

    y = ours(jnp.asarray(x))
    dx = jax.grad(lambda x: (ours(x) * w).sum())(jnp.asarray(x))
    rel_y, rel_dx = _rel(y, yt.detach().float().cpu().numpy()), _rel(dx, xt.grad.float().cpu().numpy())
    print(f"FLA parity: output rel err {rel_y:.2e}, input-gradient rel err {rel_dx:.2e}")
    assert rel_y < 3e-2 and rel_dx < 3e-2, (rel_y, rel_dx)
