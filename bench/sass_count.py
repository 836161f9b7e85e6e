"""Counts the sm_90 machine instructions (SASS) of the CUDA drift-state kernel, the one speed figure
that can be measured without a GPU.

    python bench/sass_count.py [--cu FILE] [--label NAME] [--out bench/results/sass.md]

Compiles csrc/drift_state_cuda.cu for sm_90 with the library's own nvcc flags (-O3 --fmad=false),
disassembles the cubin (cuobjdump -sass) and reads the kernel for l = 5 rows (drift_state_kernel<5, 0>):

* scatter per element-row: the instructions of the straight-line blocks holding the sketch's int32
  shared-memory atomics (ATOMS.ADD; one per element and row), divided by the number of atomics in
  them.  It holds the per-row work (three modular additions of the hash, the bucket, the sign, the
  atomic) and whatever per-element work the compiler scheduled among them.
* per element in all: the chunk loop's instructions (each counted once, as written in the
  machine code) less its rare paths, divided by the elements per thread and chunk; and the same
  on a full chunk, less the bounds-tested loads of a partial chunk (the arm of an if/else holding
  predicated global loads, which only the vector's last chunk runs).  A rare path is
  the smallest region a forward branch skips that stores to global memory (the end of a norm tile
  or of a unit) or handles non-finite terms.  The block's prologue and epilogue (once per block)
  are left out; the flush of a chunk table (ceil(l m / 256) entries per thread) counts once.

nvcc is taken from $CUDACXX, $CUDA_HOME/bin or /usr/local/cuda*/bin; cuobjdump from the same
toolkit, $CUOBJDUMP, or the triton/nvidia-cuda-cuobjdump wheels of the cuda-check venv.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "src/fda/kernels/csrc"
ROWS, WIDTH, THREADS = 5, 250, 256
NVCC_FLAGS = ["-cubin", "-arch=sm_90", "-O3", "--fmad=false", "-std=c++17"]
INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[0-7T]\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
KERNEL = re.compile(r"Function : (\S*drift_state_kernelILi(\d+)ELi0E(?:Lb0E)?E\S*)")
RARE = ("STG", "ATOMS.CAS", "ATOMS.OR", "ATOMS.POPC", "RED.", "ATOM.", "ATOMG")


@dataclass
class Insn:
    addr: int
    pred: str
    op: str
    args: str

    @property
    def target(self) -> int | None:
        if self.op.startswith("BRA") and not self.op.startswith("BRA.DIV"):
            m = re.search(r"0x([0-9a-f]+)\s*$", self.args)
            return int(m.group(1), 16) if m else None
        return None


def find_tool(name: str, env: str) -> str:
    cands = [os.environ.get(env, "")]
    for home in (os.environ.get("CUDA_HOME", ""), *sorted(glob.glob("/usr/local/cuda*"), reverse=True)):
        if home:
            cands.append(f"{home}/bin/{name}")
    venv = Path.home() / ".cache/fda/cuda-venv"
    cands += sorted(glob.glob(f"{venv}/lib/python*/site-packages/triton/backends/nvidia/bin/{name}"))
    cands += sorted(glob.glob(f"{venv}/lib/python*/site-packages/nvidia/cu*/bin/{name}"))
    cands.append(shutil.which(name) or "")
    for c in cands:
        if c and os.access(c, os.X_OK):
            return c
    sys.exit(f"sass_count: {name} not found (set {env}=/path/to/{name})")


def disassemble(cu: Path, defines: list[str]) -> str:
    nvcc = os.environ.get("CUDACXX") or find_tool("nvcc", "NVCC")
    cuobjdump = find_tool("cuobjdump", "CUOBJDUMP")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cmd = [nvcc, *NVCC_FLAGS, *defines, f"-I{CSRC}", str(cu), "-o", str(cubin)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            sys.exit(f"sass_count: nvcc failed:\n{res.stderr[-3000:]}")
        return subprocess.run([cuobjdump, "-sass", str(cubin)], check=True, capture_output=True,
                              text=True).stdout


def kernel_insns(sass: str, rows: int) -> list[Insn]:
    out, on = [], False
    for line in sass.splitlines():
        if "Function :" in line:
            m = KERNEL.search(line)
            on = bool(m) and int(m.group(2)) == rows
            continue
        if on:
            m = INSN.search(line)
            if m:
                out.append(Insn(int(m.group(1), 16), (m.group(2) or "").strip(), m.group(3), m.group(4)))
    if not out:
        sys.exit(f"sass_count: no drift_state_kernel<{rows}, 0> in the cubin")
    return out


def is_scatter_atomic(i: Insn) -> bool:
    return i.op == "ATOMS.ADD"


def blocks(insns: list[Insn]) -> list[tuple[int, int]]:
    """Straight-line blocks as [first, last] indices: split at branch targets and after control flow."""
    starts = {0}
    index = {i.addr: k for k, i in enumerate(insns)}
    for k, i in enumerate(insns):
        if i.target is not None and i.target in index:
            starts.add(index[i.target])
        if i.op.startswith(("BRA", "EXIT", "BAR", "RET", "BSYNC", "WARPSYNC")) or i.pred:
            if i.op.startswith(("BRA", "EXIT", "BAR", "RET", "BSYNC", "WARPSYNC")):
                starts.add(k + 1)
    s = sorted(x for x in starts if x < len(insns))
    return [(a, b - 1) for a, b in zip(s, s[1:] + [len(insns)])]


def main_loop(insns: list[Insn]) -> tuple[int, int]:
    """The chunk loop: the widest backward branch whose range holds the scatter's atomics."""
    index = {i.addr: k for k, i in enumerate(insns)}
    best = None
    for k, i in enumerate(insns):
        t = i.target
        if t is None or t > i.addr or t not in index:
            continue
        lo = index[t]
        if any(is_scatter_atomic(x) for x in insns[lo:k + 1]) and (best is None or k - lo > best[1] - best[0]):
            best = (lo, k)
    if best is None:
        sys.exit("sass_count: no loop around the scatter found")
    return best


def rare_ranges(insns: list[Insn], lo: int, hi: int) -> list[tuple[int, int]]:
    """For each rare-path instruction in the loop, the smallest region around it that a forward
    branch skips (its `if`), merged."""
    index = {i.addr: k for k, i in enumerate(insns)}
    skipped = []
    for k in range(lo, hi + 1):
        t = insns[k].target
        if t is not None and t > insns[k].addr and t in index and index[t] <= hi + 1 and insns[k].pred:
            skipped.append((k + 1, index[t] - 1))
    picked = set()
    for k in range(lo, hi + 1):
        if not insns[k].op.startswith(RARE):
            continue
        around = [r for r in skipped if r[0] <= k <= r[1]
                  and not any(is_scatter_atomic(x) for x in insns[r[0]:r[1] + 1])]
        if around:
            picked.add(min(around, key=lambda r: r[1] - r[0]))
    merged: list[tuple[int, int]] = []
    for r in sorted(picked):
        if merged and r[0] <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], r[1]))
        else:
            merged.append(r)
    return merged


def partial_load_path(insns: list[Insn], lo: int, hi: int, per_thread: int) -> set[int]:
    """The bounds-tested loads of a partial chunk (only the vector's last chunk runs them): the arm
    of an if/else in the loop, skipped by an unconditional forward branch, that holds at least
    `per_thread` predicated global loads and no atomics."""
    index = {i.addr: k for k, i in enumerate(insns)}
    for k in range(lo, hi + 1):
        i = insns[k]
        t = i.target
        if i.pred or t is None or t <= i.addr or t not in index or index[t] > hi + 1:
            continue
        arm = range(k + 1, index[t])
        loads = sum(insns[j].pred != "" and insns[j].op.startswith("LDG") for j in arm)
        if loads >= per_thread and not any(insns[j].op.startswith("ATOM") for j in arm):
            return set(arm)
    return set()


def count(insns: list[Insn], per_thread: int) -> dict:
    lo, hi = main_loop(insns)
    rare = rare_ranges(insns, lo, hi)
    in_rare = set()
    for a, b in rare:
        in_rare.update(range(a, b + 1))
    common = sum(1 for k in range(lo, hi + 1) if k not in in_rare)
    partial = partial_load_path(insns, lo, hi, per_thread) - in_rare
    scatter_n = scatter_atomics = 0
    for a, b in blocks(insns):
        n_at = sum(is_scatter_atomic(x) for x in insns[a:b + 1])
        if n_at and a >= lo and b <= hi:
            scatter_n += b - a + 1
            scatter_atomics += n_at
    return {
        "kernel_insns": len(insns), "loop_insns": hi - lo + 1, "rare_insns": len(in_rare),
        "common_path_per_chunk": common, "per_element": common / per_thread,
        "partial_load_insns": len(partial), "full_chunk_per_element": (common - len(partial)) / per_thread,
        "scatter_insns": scatter_n, "scatter_atomics": scatter_atomics,
        "per_element_row": scatter_n / max(1, scatter_atomics),
    }


def per_thread_of(cu: Path) -> int:
    m = re.search(r"#define FDA_CUDA_PER_THREAD (\d+)", cu.read_text())
    return int(m.group(1)) if m else 16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cu", type=Path, default=CSRC / "drift_state_cuda.cu")
    ap.add_argument("--label", default="current")
    ap.add_argument("--sass", type=Path, help="read this cuobjdump -sass listing instead of compiling")
    ap.add_argument("--out", type=Path, help="append a row to this markdown table")
    ap.add_argument("--max-per-element-row", type=float, help="fail above this (make cuda-check)")
    ap.add_argument("--max-per-element", type=float, help="fail above this (make cuda-check)")
    args = ap.parse_args()
    sass = args.sass.read_text() if args.sass else disassemble(args.cu, [])
    c = count(kernel_insns(sass, ROWS), per_thread_of(args.cu))
    line = (f"| {args.label} | {c['scatter_insns']} / {c['scatter_atomics']} = {c['per_element_row']:.2f} "
            f"| {c['common_path_per_chunk']} / {per_thread_of(args.cu)} = {c['per_element']:.1f} "
            f"| {c['full_chunk_per_element']:.1f} "
            f"| {c['loop_insns']} | {c['rare_insns']} | {c['partial_load_insns']} | {c['kernel_insns']} |")
    print("sass_count (sm_90, drift_state_kernel<5, 0>, m = 250): scatter per element-row "
          f"{c['per_element_row']:.2f}, per element in all {c['per_element']:.1f} "
          f"({c['full_chunk_per_element']:.1f} on a full chunk)")
    print(line)
    if args.out:
        if not args.out.exists():
            args.out.write_text(HEADER)
        with args.out.open("a") as f:
            f.write(line + "\n")
    bad = []
    if args.max_per_element_row is not None and c["per_element_row"] > args.max_per_element_row:
        bad.append(f"scatter {c['per_element_row']:.2f} > {args.max_per_element_row} per element-row")
    if args.max_per_element is not None and c["per_element"] > args.max_per_element:
        bad.append(f"{c['per_element']:.1f} > {args.max_per_element} per element")
    if bad:
        sys.exit("sass_count: FAIL -- " + "; ".join(bad))


HEADER = """# sm_90 SASS of the drift-state kernel (l = 5, m = 250, with xi)

Written by `bench/sass_count.py` (see its docstring for what is counted).  nvcc 13.0, -O3 --fmad=false.

| version | scatter: insns / atomics = per element-row | chunk loop less rare paths / elements per thread = per element | per element on a full chunk | chunk loop (static) | rare paths in it | partial chunk's loads | kernel (static) |
| --- | --- | --- | --- | --- | --- | --- | --- |
"""

if __name__ == "__main__":
    main()
