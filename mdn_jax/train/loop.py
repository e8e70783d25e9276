"""The training loop: data, model, mesh, state (fresh or resumed), jitted steps, logging, eval, checkpoints.

Output directory layout (cfg.out): config.json, metrics.jsonl, tb/ (TensorBoard), checkpoints/<step>/,
params/ (params-only export at the end).
"""

from __future__ import annotations

import json
import os
import signal
import time

import jax
import numpy as np

from mdn_jax.data.pipeline import make_pipeline
from mdn_jax.data.sources import load_source, split_source
from mdn_jax.data.tokenizers import get_tokenizer
from mdn_jax.errors import UserError
from mdn_jax.train import sharding as shd
from mdn_jax.train.checkpoint import Checkpointer, export_params
from mdn_jax.train.config import TrainConfig, parse_profile_steps
from mdn_jax.train.flops import device_peak_flops, flops_per_token
from mdn_jax.train.metrics import MetricsLogger
from mdn_jax.train.model_api import model_factory
from mdn_jax.train.state import abstract_state, init_state, make_setup
from mdn_jax.train.step import make_eval_step, make_train_step


class _Stop:
    """Set by SIGTERM/SIGINT: the loop checkpoints and exits after the current step."""

    def __init__(self):
        self.flag = False
        self.old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def _handler(self, signum, frame):
        self.flag = True

    def __exit__(self, *exc):
        for sig, h in self.old.items():
            signal.signal(sig, h)
        return False


def check_batch(cfg: TrainConfig, mesh) -> int:
    """Rows per process of each global batch; raises UserError when the sizes do not divide."""
    dp = shd.batch_parallel_size(mesh)
    micro = cfg.batch_size // cfg.grad_accum
    if micro % dp:
        raise UserError(f"batch size {cfg.batch_size} (micro-batch {micro} with grad_accum {cfg.grad_accum}) is not "
                        f"divisible by the data-parallel size {dp} (mesh data x fsdp)")
    if cfg.batch_size % jax.process_count():
        raise UserError(f"batch size {cfg.batch_size} is not divisible by the process count {jax.process_count()}")
    return cfg.batch_size // jax.process_count()


def _to_global(batch: dict, sharding, global_rows: int) -> dict:
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v), (global_rows,) + v.shape[1:])
            for k, v in batch.items()}


def _pad_rows(batch: dict, rows: int) -> dict:
    n = batch["tokens"].shape[0]
    if n == rows:
        return batch
    return {k: np.concatenate([v, np.zeros((rows - n,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}


def evaluate(eval_step, params, make_eval_pipeline, local_rows, global_rows, bsh, n_batches) -> dict:
    """Mean loss / perplexity over the first `n_batches` held-out batches (the same ones every time)."""
    pipe = make_eval_pipeline()
    total, count = 0.0, 0.0
    try:
        for _ in range(n_batches):
            try:
                b = next(pipe)
            except StopIteration:
                break
            ls, c = eval_step(params, _to_global(_pad_rows(b, local_rows), bsh, global_rows))
            total, count = total + float(ls), count + float(c)
    finally:
        pipe.close()
    loss = total / max(count, 1.0)
    return {"loss": loss, "ppl": float(np.exp(min(loss, 50.0))), "tokens": count}


def peak_memory_gib() -> float | None:
    """Peak device memory in use on the first local device (GiB), where the backend reports it."""
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2 ** 30


class _Profiler:
    """Traces steps [start, end) with jax.profiler into `directory` (perfetto trace included)."""

    def __init__(self, spec: str, directory: str):
        self.start, self.end = parse_profile_steps(spec) if spec else (0, 0)
        self.directory, self.active = directory, False

    def before(self, step: int):  # step: the step about to run (1-based)
        if step == self.start and not self.active and jax.process_index() == 0:
            jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
            self.active = True

    def after(self, step: int, state):
        if self.active and (step >= self.end - 1):
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.active = False

    def close(self):
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


def train(cfg: TrainConfig, log=print) -> dict:
    """Run training; returns {"step", "losses" (per logged step), "eval", "sample", "skipped"}."""
    t_setup = time.perf_counter()
    cfg.validate()
    shd.maybe_initialize_distributed()
    if cfg.compile_cache:
        _use_compile_cache(cfg.compile_cache)
    pidx, pcount = jax.process_index(), jax.process_count()
    tokenizer = get_tokenizer(cfg.tokenizer)
    source = load_source(cfg.data, cfg.text_key)
    train_src, eval_src = split_source(source, cfg.eval_fraction, cfg.seed)
    mesh = shd.make_mesh(cfg.mesh_data, cfg.mesh_fsdp, cfg.mesh_tensor)
    local_rows = check_batch(cfg, mesh)
    make_model, model_cfg = model_factory(cfg, tokenizer.vocab_size)
    setup = make_setup(cfg, mesh, make_model, model_cfg)
    os.makedirs(cfg.out, exist_ok=True)
    if pidx == 0:
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            json.dump(cfg.to_dict(), f, indent=1)
    ckpt = Checkpointer(os.path.join(cfg.out, "checkpoints"), cfg.keep_checkpoints, cfg.async_checkpoint)

    pipe = make_pipeline(train_src, tokenizer, seq_len=cfg.seq_len, batch_size=local_rows, seed=cfg.seed,
                         shard_index=pidx, shard_count=pcount, prefetch=cfg.prefetch)
    state, start = None, 0
    if cfg.resume:
        restored = ckpt.restore_latest(abstract_state(setup), log=lambda m: log(m))
        if restored is not None:
            start, state, data_state, _ = restored
            pipe.set_state(data_state)
            log(f"resumed from step {start} ({ckpt.directory})")
        else:
            log(f"--resume: no checkpoint in {ckpt.directory}, starting fresh")
    elif ckpt.steps():
        raise UserError(f"{ckpt.directory} already has checkpoints {ckpt.steps()}: pass --resume or another --out")
    if state is None:
        state = init_state(setup)

    eval_shard = (pidx, pcount) if eval_src is not None and len(eval_src) >= pcount else (0, 1)

    def make_eval_pipeline():
        return make_pipeline(eval_src, tokenizer, seq_len=cfg.seq_len, batch_size=local_rows, seed=cfg.seed,
                             shard_index=eval_shard[0], shard_count=eval_shard[1], num_epochs=1, shuffle=False,
                             prefetch=0)

    train_step, eval_step = make_train_step(setup), make_eval_step(setup)
    bsh = shd.batch_sharding(mesh)
    fpt = flops_per_token(model_cfg, cfg.seq_len, setup.n_params, setup.embedding_params)
    peak = device_peak_flops(jax.devices()[0], cfg.peak_flops)
    last = cfg.stop_at_step if 0 < cfg.stop_at_step < cfg.steps else cfg.steps
    logger = MetricsLogger(cfg.out, cfg.steps, start, cfg.progress, cfg.tensorboard)
    log(f"model {cfg.model}: {setup.n_params:,} params, {fpt / 1e6:.2f} MFLOP/token | mesh "
        f"{dict(mesh.shape)} | batch {cfg.batch_size}x{cfg.seq_len} (accum {cfg.grad_accum}) | "
        f"tokenizer {tokenizer.name} | data {cfg.data}: {len(train_src)} train / "
        f"{0 if eval_src is None else len(eval_src)} eval docs | set-up {time.perf_counter() - t_setup:.1f} s")
    losses, evals, step = [], [], start
    profiler = _Profiler(cfg.profile_steps, os.path.join(cfg.out, "profile"))

    def save(step, force=True):
        ckpt.save(step, state, pipe.get_state(), {"step": step, "config": cfg.to_dict()}, force=force)

    try:
        with _Stop() as stop:
            t_last, n_tok, n_steps, paused = time.perf_counter(), 0, 0, 0.0  # paused: eval/checkpoint/compile
            compiled, compile_s = None, None
            while step < last:
                batch = _to_global(next(pipe), bsh, cfg.batch_size)
                if compiled is None:
                    compiled, compile_s = _compile(train_step, state, batch, logger.print)
                    paused += compile_s
                profiler.before(step + 1)
                state, m = compiled(state, batch)
                step += 1
                profiler.after(step, state)
                n_tok += cfg.batch_size * cfg.seq_len
                n_steps += 1
                if step % cfg.log_every == 0 or step == last or step == start + 1:
                    m = jax.device_get(m)
                    dt = time.perf_counter() - t_last - paused
                    tps = n_tok / dt
                    rec = {"loss": m["loss"], "ppl": float(np.exp(min(float(m["loss"]), 50.0))), "lr": m["lr"],
                           "grad_norm": m["grad_norm"], "skipped": m["skipped"], "tokens_per_s": tps,
                           "step_time": dt / n_steps}
                    if peak:
                        rec["mfu"] = tps * fpt / (peak * jax.device_count())
                    mem = peak_memory_gib()
                    if mem is not None:
                        rec["peak_mem_gib"] = mem
                    if compile_s is not None:  # the first logged step: its compile, not in step_time
                        rec["compile_s"], compile_s = compile_s, None
                    if not bool(m["finite"]):
                        logger.print(f"warning: step {step}: non-finite gradients, update skipped "
                                     f"({int(m['skipped'])} skipped so far)")
                    logger.log(step, "train", rec)
                    losses.append((step, float(m["loss"])))
                    t_last, n_tok, n_steps, paused = time.perf_counter(), 0, 0, 0.0
                do_eval = eval_src is not None and cfg.eval_every > 0 and (step % cfg.eval_every == 0 or step == last)
                do_ckpt = step % cfg.ckpt_every == 0
                if do_eval or do_ckpt:  # the time of eval/checkpoint is not training time
                    jax.block_until_ready(state)
                t_pause = time.perf_counter()
                if do_eval:
                    ev = evaluate(eval_step, state["params"], make_eval_pipeline, local_rows, cfg.batch_size, bsh,
                                  cfg.eval_batches)
                    logger.log(step, "eval", ev)
                    evals.append((step, ev["loss"]))
                if do_ckpt:
                    save(step)
                paused += time.perf_counter() - t_pause
                if stop.flag:
                    logger.print(f"signal received: checkpointing step {step} and stopping")
                    break
            save(step)
            ckpt.wait()
            sample = None
            if step >= cfg.steps or not stop.flag:
                if pidx == 0 and step >= last:
                    export_params(state["params"], os.path.join(cfg.out, "params"))
                if cfg.sample_tokens > 0:
                    sample = _sample(setup.merge(state["params"]), tokenizer, cfg)
                    logger.print("sample:\n" + sample)
    finally:
        profiler.close()
        logger.close()
        pipe.close()
        ckpt.close()
    return {"step": step, "losses": losses, "eval": evals, "sample": sample,
            "skipped": int(jax.device_get(state["skipped"])), "state": state}


def _use_compile_cache(path: str) -> None:
    """Point JAX's persistent compilation cache at `path` (created if missing); programs compiled in >= 1 s are
    kept there and loaded by later runs of the same programs."""
    path = os.path.abspath(os.path.expanduser(path))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"compile_cache: cannot create {path}: {e}") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"compile_cache: {path} is not writable")
    jax.config.update("jax_compilation_cache_dir", path)


def _compile(train_step, state, batch, say) -> tuple:
    """(the train step compiled for these arguments' shapes and shardings, seconds taken), saying so before and
    after: at the 400M model on one GPU this takes minutes."""
    say("compiling the train step ...")
    t = time.perf_counter()
    lowered = train_step.lower(state, batch)
    t_lower = time.perf_counter() - t
    compiled = lowered.compile()
    dt = time.perf_counter() - t
    say(f"compiled the train step in {dt:.1f} s (tracing and lowering {t_lower:.1f} s, XLA {dt - t_lower:.1f} s)")
    return compiled, dt


def _sample(model, tokenizer, cfg) -> str:
    """A short continuation of `cfg.sample_prompt` (cached generation, top-k sampling), or why there is none."""
    if not hasattr(model, "init_cache"):
        return "(no sample: the model has no init_cache for generation)"
    from mdn_jax.inference import generate

    text = generate(model, tokenizer, [cfg.sample_prompt], max_new_tokens=cfg.sample_tokens,
                    temperature=cfg.sample_temperature, top_k=40, seed=cfg.seed)[0]
    return cfg.sample_prompt + text
