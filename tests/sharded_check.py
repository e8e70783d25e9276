"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8: sharded train steps == the unsharded step."""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from mdn_jax.train.config import load_train_config
from mdn_jax.train.model_api import model_factory
from mdn_jax.train.sharding import batch_sharding, make_mesh
from mdn_jax.train.state import init_state, make_setup
from mdn_jax.train.step import make_train_step


def run(mesh_shape, devices, accum=1, model="tiny_model:build", **overrides):
    cfg = load_train_config("tiny", {"model": model, "batch_size": 8, "seq_len": 16, "grad_accum": accum,
                                     "warmup_steps": 1, "loss_chunk": 40, **overrides})
    make, mcfg = model_factory(cfg, 259)
    mesh = make_mesh(*mesh_shape, devices=devices)
    setup = make_setup(cfg, mesh, make, mcfg)
    state = init_state(setup)
    step = make_train_step(setup)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(3):
        seg = np.sort(rng.integers(1, 4, (8, 16)), axis=1).astype(np.int32)
        b = {"tokens": rng.integers(0, 259, (8, 16)).astype(np.int32), "segment_ids": seg}
        b = {k: jax.device_put(v, batch_sharding(mesh)) for k, v in b.items()}
        state, m = step(state, b)
        losses.append(float(m["loss"]))
    specs = {str(k): str(v.sharding.spec) for k, v in jax.tree_util.tree_leaves_with_path(state["params"])}
    return losses, jax.tree.map(np.asarray, state["params"]), specs


def main():
    assert jax.device_count() == 8, jax.device_count()
    ref_l, ref_p, _ = run((1, 1, 1), jax.devices()[:1])
    for shape, accum in [((8, 1, 1), 1), ((2, 4, 1), 1), ((2, 2, 2), 1), ((1, 4, 2), 2)]:
        l, p, specs = run(shape, jax.devices(), accum)
        np.testing.assert_allclose(l, ref_l, rtol=2e-5, atol=2e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6), p, ref_p)
        if shape[1] > 1:
            assert any("fsdp" in s for s in specs.values()), specs
        if shape[2] > 1:
            assert any("tensor" in s for s in specs.values()), specs
        print("ok", shape, accum, l)
    # the MDN model with its blocks as one lax.scan, sharded over data x fsdp x tensor == its unsharded loop
    ref_l, ref_p, _ = run((1, 1, 1), jax.devices()[:1], model="tiny_mdn")
    l, p, _ = run((2, 2, 2), jax.devices(), model="tiny_mdn", **{"model.scan_layers": True})
    np.testing.assert_allclose(l, ref_l, rtol=2e-5, atol=2e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6), p, ref_p)
    print("ok scan_layers (2, 2, 2)", l)
    print("ALL OK")
    return 0


if __name__ == "__main__":
    jnp.zeros(())
    sys.exit(main())
