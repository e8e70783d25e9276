"""Metric sinks: console (tqdm bar when available and on a TTY, else one line per log), JSONL and TensorBoard.

Only process 0 writes. Each record is {"step", "split": "train"|"eval", ...scalars}.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax


class MetricsLogger:
    def __init__(self, out_dir: str, total_steps: int, start_step: int = 0, progress: bool = True,
                 tensorboard: bool = True):
        self.primary = jax.process_index() == 0
        self.jsonl = None
        self.tb = None
        self.bar = None
        if not self.primary:
            return
        os.makedirs(out_dir, exist_ok=True)
        self.jsonl = open(os.path.join(out_dir, "metrics.jsonl"), "a")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(os.path.join(out_dir, "tb"))
            except ImportError:
                self.tb = None
        if progress and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, unit="step")
            except ImportError:
                self.bar = None

    def log(self, step: int, split: str, scalars: dict) -> None:
        if not self.primary:
            return
        rec = {"step": int(step), "split": split, "time": time.time()}
        rec.update({k: float(v) for k, v in scalars.items()})
        self.jsonl.write(json.dumps(rec) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in scalars.items():
                if math.isfinite(float(v)):
                    self.tb.add_scalar(f"{split}/{k}", float(v), int(step))
        self.print(format_line(step, split, scalars), step=step, split=split)

    def print(self, msg: str, step: int | None = None, split: str = "") -> None:
        if not self.primary:
            return
        if self.bar is not None:
            if step is not None and split == "train":
                self.bar.n = int(step)
                self.bar.set_postfix_str(msg.split(" ", 2)[-1][:80], refresh=True)
            else:
                self.bar.write(msg)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()


def format_line(step: int, split: str, s: dict) -> str:
    parts = [f"{split:5s} step {int(step):6d}"]
    fmt = {"loss": "loss {:.4f}", "ppl": "ppl {:.2f}", "lr": "lr {:.2e}", "grad_norm": "gnorm {:.3f}",
           "skipped": "skipped {:.0f}", "tokens_per_s": "tok/s {:.0f}", "step_time": "step {:.3f}s",
           "mfu": "mfu {:.1%}", "peak_mem_gib": "mem {:.1f}GiB", "compile_s": "compile {:.1f}s"}
    for k, f in fmt.items():
        if k in s:
            parts.append(f.format(float(s[k])))
    return " | ".join(parts)
