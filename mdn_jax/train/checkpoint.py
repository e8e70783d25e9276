"""Orbax checkpoints: async, keep-latest-k, atomic (orbax writes to a temporary directory and renames it).

Each step directory holds three items:
  state  the train state pytree (params, opt_state, step, skipped, rng), restored straight into its shardings
  data   {"per_process": [iterator state of process 0, 1, ...]} (JSON), so every process resumes its own shard
  meta   {"step", "config"} (JSON)
`restore_latest` walks back from the newest step: an unreadable step is reported on stderr and the previous
one is used. `export_params` writes the params alone (for inference) with a StandardCheckpointer.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from mdn_jax.errors import UserError


def _gather_json(obj) -> list:
    """The JSON of `obj` from every process (one list entry per process)."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    raw = json.dumps(obj).encode()
    n = multihost_utils.process_allgather(np.array([len(raw)], np.int32))
    buf = np.zeros((int(np.max(n)),), np.uint8)
    buf[:len(raw)] = np.frombuffer(raw, np.uint8)
    all_bufs = multihost_utils.process_allgather(buf)
    return [json.loads(bytes(all_bufs[i][:int(n[i][0])]).decode()) for i in range(jax.process_count())]


class Checkpointer:
    """A CheckpointManager over `directory` with items state / data / meta."""

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        self.mgr = ocp.CheckpointManager(self.directory, options=opts, item_names=("state", "data", "meta"))

    def save(self, step: int, state, data_state: dict, meta: dict, force: bool = True) -> bool:
        """Start an (async) save of `step`; returns whether a save was started."""
        per_process = _gather_json(data_state)
        if step in self.mgr.all_steps():
            return False
        return self.mgr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave({"per_process": per_process}),
            meta=ocp.args.JsonSave(meta)), force=force)

    def steps(self) -> list[int]:
        return sorted(self.mgr.all_steps())

    def restore_latest(self, abstract_state, log=None):
        """(step, state, data_state, meta) from the newest readable checkpoint, or None if there is none."""
        log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        steps = self.steps()
        for i, step in enumerate(reversed(steps)):
            try:
                out = self.mgr.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(),
                    meta=ocp.args.JsonRestore()))
                per = out["data"]["per_process"]
                if len(per) != jax.process_count():
                    raise UserError(f"checkpoint step {step} was written by {len(per)} processes, "
                                    f"this run has {jax.process_count()}")
                return step, out["state"], per[jax.process_index()], out["meta"]
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for a damaged checkpoint
                prev = list(reversed(steps))[i + 1] if i + 1 < len(steps) else None
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                where = f"falling back to step {prev}" if prev is not None else "no earlier checkpoint"
                log(f"warning: checkpoint step {step} in {self.directory} is unreadable ({type(e).__name__}: "
                    f"{first}); {where}")
        if steps:
            raise UserError(f"no readable checkpoint in {self.directory} (steps {steps} all failed)")
        return None

    def wait(self) -> None:
        self.mgr.wait_until_finished()

    def close(self) -> None:
        self.mgr.wait_until_finished()
        self.mgr.close()


def export_params(params, path: str) -> str:
    """Write the params pytree alone to `path` (an orbax StandardCheckpointer directory) for inference."""
    path = os.path.abspath(path)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path, params, force=True)
    ckptr.wait_until_finished()
    return path


def load_params(path: str, abstract_params=None):
    """Read params written by `export_params` (into `abstract_params` shardings if given)."""
    ckptr = ocp.StandardCheckpointer()
    return ckptr.restore(os.path.abspath(path), abstract_params) if abstract_params is not None \
        else ckptr.restore(os.path.abspath(path))
