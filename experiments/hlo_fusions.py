"""Which model code a profiled XLA kernel comes from: kernel names -> the fused ops of the optimized HLO and the
source lines they were traced from.

    XLA_FLAGS="--xla_dump_to=DUMP --xla_dump_hlo_as_text" python -m mdn_jax.cli train ...   # the profiled run
    python experiments/trace_summary.py RUN/profile --out train_profile.json
    python experiments/hlo_fusions.py DUMP --summary train_profile.json --top 6 [--out fusions.md]
    python experiments/hlo_fusions.py DUMP --kernels input_add_reduce_fusion_142,loop_multiply_fusion_41

A GPU kernel of an XLA fusion is named after its HLO instruction with '.' replaced by '_'
(`%input_add_reduce_fusion.142` -> `input_add_reduce_fusion_142`). The dump's `*after_optimizations.txt` files
hold the scheduled modules with each instruction's `op_name` (JAX's name stack) and a stack frame (file, line).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re

_INSTR = re.compile(r"^\s*(?:ROOT )?%(?P<name>[\w.\-]+) = (?P<type>.+?) (?P<op>[\w\-]+)\(")
_COMP = re.compile(r"^(?:ENTRY )?%(?P<name>[\w.\-]+) .*\{$")
_CALLS = re.compile(r"calls=%(?P<comp>[\w.\-]+)")
_OP_NAME = re.compile(r'op_name="(?P<op_name>[^"]*)"')
_FRAME = re.compile(r"stack_frame_id=(?P<frame>\d+)")


def kernel_name(instruction: str) -> str:
    """The GPU kernel name of an HLO instruction name."""
    return re.sub(r"[^A-Za-z0-9_]", "_", instruction)


def parse_module(text: str) -> dict:
    """Computations {name: [instruction lines]} and the source of each stack frame {id: [(file, line, fn)]}."""
    tables = collections.defaultdict(dict)
    comps, current, section = {}, None, None
    for line in text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            section = line
            continue
        if section and re.match(r"^\d+ ", line):
            key, value = line.split(" ", 1)
            tables[section][int(key)] = value.strip().strip('"')
            continue
        section = None
        if (m := _COMP.match(line)) and current is None:
            current = comps.setdefault(m["name"], [])
        elif line.startswith("}"):
            current = None
        elif current is not None and _INSTR.match(line):
            current.append(line)
    return dict(computations=comps, frames=_frames(tables))


def _frames(tables) -> dict:
    def field(s, name):
        m = re.search(rf"{name}=(\d+)", s)
        return int(m.group(1)) if m else None

    locations = {}
    for i, s in tables["FileLocations"].items():
        file = tables["FileNames"].get(field(s, "file_name_id"), "?")
        fn = tables["FunctionNames"].get(field(s, "function_name_id"), "?")
        locations[i] = (file, field(s, "line"), fn)
    frames = {}
    for i in tables["StackFrames"]:
        chain, seen, j = [], set(), i
        while j and j not in seen:  # innermost first; parent_frame_id counts from 1 (0: no parent)
            seen.add(j)
            entry = tables["StackFrames"].get(j, "")
            chain.append(locations.get(field(entry, "file_location_id"), ("?", None, "?")))
            j = (field(entry, "parent_frame_id") or 1) - 1
        frames[i] = chain
    return frames


def describe(module: dict, kernel: str, project: str = "mdn_jax") -> dict | None:
    """The instruction behind a kernel: its type, opcode counts of the fused computation, the distinct op_names
    and the innermost source lines inside `project` (falling back to the innermost frame)."""
    for comp in module["computations"].values():
        for line in comp:
            m = _INSTR.match(line)
            if kernel_name(m["name"]) != kernel:
                continue
            called = [module["computations"].get(c, []) for c in _CALLS.findall(line)]
            body = [x for c in called for x in c] or [line]
            ops = collections.Counter(_INSTR.match(x)["op"] for x in body)
            op_names = collections.Counter(n for x in body for n in _OP_NAME.findall(x))
            sources = collections.Counter()
            for x in body:
                if f := _FRAME.search(x):
                    chain = module["frames"].get(int(f["frame"]), [])
                    inside = [c for c in chain if project in c[0]] or chain[:1]
                    if inside:
                        file, lineno, fn = inside[0]
                        sources[f"{os.path.relpath(file) if os.path.isabs(file) else file}:{lineno} ({fn})"] += 1
            return dict(kernel=kernel, instruction=m["name"], type=m["type"], ops=dict(ops.most_common(8)),
                        op_names=[n for n, _ in op_names.most_common(6)],
                        sources=[s for s, _ in sources.most_common(6)])
    return None


def find(dump_dir: str, kernels: list[str]) -> list[dict]:
    """Describe each kernel from the first after-optimizations module (largest first) that holds it."""
    files = sorted(glob.glob(os.path.join(dump_dir, "*after_optimizations.txt")), key=os.path.getsize, reverse=True)
    if not files:
        raise FileNotFoundError(f"no *after_optimizations.txt under {dump_dir} (dump with --xla_dump_hlo_as_text)")
    found, todo = [], list(kernels)
    for path in files:
        if not todo:
            break
        with open(path) as f:
            module = parse_module(f.read())
        for k in list(todo):
            if d := describe(module, k):
                found.append(dict(d, module=os.path.basename(path)))
                todo.remove(k)
    found += [dict(kernel=k, missing=True) for k in todo]
    return found


def top_fusions(summary_path: str, n: int) -> list[tuple[str, float, int]]:
    """The n largest fusion kernels (name, us, calls) of a `trace_summary.py` JSON."""
    with open(summary_path) as f:
        top = json.load(f)["top"]
    is_fusion = re.compile(r"fusion|^loop_|^input_")
    return [tuple(t) for t in top if is_fusion.search(t[0]) and not t[0].startswith("_")][:n]


def to_markdown(rows, times=None) -> str:
    out = ["| kernel | ms | calls | type | ops | op_names | sources |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        us, calls = (times or {}).get(r["kernel"], (None, None))
        ms = "" if us is None else f"{us / 1e3:.2f}"
        if r.get("missing"):
            out.append(f"| `{r['kernel']}` | {ms} | {calls or ''} | not in the dump | | | |")
            continue
        ops = ", ".join(f"{k} {v}" for k, v in r["ops"].items())
        out.append(f"| `{r['kernel']}` | {ms} | {calls or ''} | `{r['type']}` | {ops} | "
                   f"{'<br>'.join(r['op_names'])} | {'<br>'.join(r['sources'])} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dump_dir")
    ap.add_argument("--kernels", default="", help="comma-separated kernel names")
    ap.add_argument("--summary", help="trace_summary.py JSON: take its largest fusion kernels")
    ap.add_argument("--top", type=int, default=6)
    ap.add_argument("--out", help="write the table (markdown) here too")
    a = ap.parse_args()
    kernels = [k for k in a.kernels.split(",") if k]
    times = {}
    if a.summary:
        for name, us, calls in top_fusions(a.summary, a.top):
            kernels.append(name)
            times[name] = (us, calls)
    if not kernels:
        ap.error("give --kernels or --summary")
    table = to_markdown(find(a.dump_dir, kernels), times)
    print(table)
    if a.out:
        with open(a.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
