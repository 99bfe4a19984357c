"""Benchmark: ``modules.loss.IDDCLoss`` against the plain SPEC transcription (tests/reference_loss.py).

For each map size (B = 16, C = 384, K = 27 by default) it reports, for forward and forward+backward:

* the median wall time over ``--repeats`` runs after one warm-up, both implementations in this process,
  alternating within each repeat;
* the peak memory of one forward+backward: on CUDA ``max_memory_allocated`` over the inputs; on CPU
  each (implementation, size) runs in a fresh subprocess and reports the growth of the resident
  high-water mark (``VmHWM``, reset just before the run; ``ru_maxrss`` as a fallback) over a baseline
  taken after the inputs are allocated and torch is warmed up on a tiny problem (tracemalloc does not
  see torch's allocations).

The shifts are fixed to (1, 5, 9): three distinct classes (s and B - s are the same term), so the
implementation cannot skip a duplicate negative and the comparison is its worst case.

    python benchmarks/bench_loss.py [--device cpu|cuda] [--repeats 5] [--sizes 14 28]
"""

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from modules.loss import IDDCLoss  # noqa: E402
from tests.reference_loss import reference_loss  # noqa: E402
from utils.cli import ArgumentParser

SHIFTS = (1, 5, 9)  # for B >= 10; folded into 1..B-1 for smaller batches (see main)
KEYS = ("pos", "neg", "balance", "entropy", "total")


def make_inputs(batch, size, channels, clusters, device, seed=0):
    """Features with some shared structure (so both masks select a fair share) and random logits."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(8, channels, generator=g)
    idx = torch.randint(0, 8, (batch, size, size), generator=g)
    f0 = protos[idx].permute(0, 3, 1, 2) + 0.8 * torch.randn(batch, channels, size, size, generator=g)  # (B, C, h, w)
    f1 = protos[idx].permute(0, 3, 1, 2) + 0.8 * torch.randn(batch, channels, size, size, generator=g)  # (B, C, h, w)
    z0 = 2.0 * torch.randn(batch, clusters, size, size, generator=g)  # (B, K, h, w)
    z1 = 2.0 * torch.randn(batch, clusters, size, size, generator=g)  # (B, K, h, w)
    return [t.to(device) for t in (f0, f1, z0, z1)]


def run_impl(impl, inputs):
    """One forward (returning its output dict) with fresh leaf logits."""
    f0, f1, z0, z1 = inputs
    z0 = z0.detach().requires_grad_(True)
    z1 = z1.detach().requires_grad_(True)
    if impl == "iddc":
        out = IDDCLoss()(f0, f1, z0, z1, neg_shifts=SHIFTS)
    else:
        out = reference_loss(f0, f1, z0, z1, SHIFTS)
    return out, (z0, z1)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_once(impl, inputs, device):
    """(forward seconds, forward+backward seconds) of one step."""
    sync(device)
    t0 = time.perf_counter()
    out, _ = run_impl(impl, inputs)
    sync(device)
    t1 = time.perf_counter()
    out["total"].backward()
    sync(device)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t0


def time_impls(impls, inputs, repeats, device):
    """Median forward and forward+backward ms per implementation.

    The implementations alternate within each repeat (one warm-up round first), so that a burst of
    load from other processes on a shared machine hits both rather than one.
    """
    times = {impl: ([], []) for impl in impls}
    for i in range(repeats + 1):
        order = impls if i % 2 == 0 else impls[::-1]
        for impl in order:
            fwd, both = time_once(impl, inputs, device)
            if i > 0:  # round 0 is the warm-up
                times[impl][0].append(fwd)
                times[impl][1].append(both)
    return {impl: (statistics.median(f) * 1e3, statistics.median(b) * 1e3) for impl, (f, b) in times.items()}


def _proc_status_bytes(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise KeyError(field)


def reset_peak_rss():
    """Start a new resident high-water mark; returns the baseline (bytes) to subtract from ``peak_rss``.

    On Linux ``ru_maxrss`` is inherited from the parent across fork/exec (a child of a process that
    once used 1 GB starts at 1 GB), so the per-process ``VmHWM`` of /proc/self/status is used and,
    where allowed, reset to the current RSS by writing 5 to /proc/self/clear_refs. Freed heap memory
    is first handed back to the system (glibc ``malloc_trim``) so that the run cannot reuse pages that
    are already counted in the baseline.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _proc_status_bytes("VmRSS")
    except OSError:
        pass
    try:
        return _proc_status_bytes("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def peak_rss():
    try:
        return _proc_status_bytes("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def measure_memory_here(impl, args, size):
    """Peak extra memory (bytes) of one forward+backward; in this process (fresh on CPU)."""
    device = args.device
    # Warm torch up on a tiny problem so that one-time costs (kernels, thread pools) are in the baseline.
    tiny = make_inputs(args.batch, 3, 8, 5, device)
    for impl_ in ("iddc", "reference"):
        out, _ = run_impl(impl_, tiny)
        out["total"].backward()
    inputs = make_inputs(args.batch, size, args.channels, args.clusters, device)
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = reset_peak_rss()
    out, _ = run_impl(impl, inputs)
    out["total"].backward()
    sync(device)
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() - base
    return peak_rss() - base


def measure_memory(impl, args, size):
    if args.device.startswith("cuda"):
        return measure_memory_here(impl, args, size)
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--device",
        args.device,
        "--batch",
        str(args.batch),
        "--channels",
        str(args.channels),
        "--clusters",
        str(args.clusters),
        "--threads",
        str(args.threads),
        "--_memory",
        impl,
        str(size),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_bytes"]


def main():
    ap = ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[14, 28])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--channels", type=int, default=384)
    ap.add_argument("--clusters", type=int, default=27)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    ap.add_argument("--_memory", nargs=2, metavar=("IMPL", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.batch < 2:
        ap.error("--batch must be at least 2")
    global SHIFTS
    SHIFTS = tuple(1 + (s - 1) % (args.batch - 1) for s in SHIFTS)

    if args._memory:
        impl, size = args._memory[0], int(args._memory[1])
        print(json.dumps({"peak_bytes": measure_memory_here(impl, args, size)}))
        return

    print(
        f"device={args.device} threads={torch.get_num_threads()} B={args.batch} C={args.channels} "
        f"K={args.clusters} shifts={SHIFTS} repeats={args.repeats} (median after 1 warm-up), torch {torch.__version__}"
    )
    rows = []
    for size in args.sizes:
        inputs = make_inputs(args.batch, size, args.channels, args.clusters, args.device)
        # Agreement check (values and gradients) before timing.
        outs, grads = {}, {}
        for impl in ("iddc", "reference"):
            out, (z0, z1) = run_impl(impl, inputs)
            out["total"].backward()
            outs[impl] = {k: out[k].item() for k in KEYS}
            grads[impl] = (z0.grad, z1.grad)
        rel = max(abs(outs["iddc"][k] - outs["reference"][k]) / max(abs(outs["reference"][k]), 1e-12) for k in KEYS)
        gdiff = max(float((a - b).abs().max()) for a, b in zip(grads["iddc"], grads["reference"]))
        gmax = max(float(b.abs().max()) for b in grads["reference"])
        row = {"size": size, "max_rel_diff_values": rel, "max_abs_diff_grads": gdiff, "grad_absmax": gmax}
        timings = time_impls(("iddc", "reference"), inputs, args.repeats, args.device)
        for impl in ("iddc", "reference"):
            row[impl + "_fwd_ms"], row[impl + "_fwdbwd_ms"] = timings[impl]
            row[impl + "_peak_mib"] = None if args.no_memory else measure_memory(impl, args, size) / 2**20
        rows.append(row)
        del inputs

    hdr = f"{'map':>6} | {'impl':>9} | {'fwd ms':>9} | {'fwd+bwd ms':>10} | {'peak MiB':>9}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        for impl in ("reference", "iddc"):
            peak = r[impl + "_peak_mib"]
            peak_s = f"{peak:9.1f}" if peak is not None else f"{'-':>9}"
            print(
                f"{r['size']:>3}x{r['size']:<2} | {impl:>9} | {r[impl + '_fwd_ms']:9.1f} | "
                f"{r[impl + '_fwdbwd_ms']:10.1f} | {peak_s}"
            )
    print()
    for r in rows:
        sp_f = r["reference_fwd_ms"] / r["iddc_fwd_ms"]
        sp_b = r["reference_fwdbwd_ms"] / r["iddc_fwdbwd_ms"]
        line = f"{r['size']}x{r['size']}: speed-up fwd {sp_f:.2f}x, fwd+bwd {sp_b:.2f}x"
        if r["iddc_peak_mib"] is not None:
            line += f"; peak memory iddc/reference = {r['iddc_peak_mib'] / max(r['reference_peak_mib'], 1e-9):.3f}"
        line += (
            f"; agreement: values max rel diff {r['max_rel_diff_values']:.1e}, "
            f"grads max abs diff {r['max_abs_diff_grads']:.1e} (grad abs max {r['grad_absmax']:.1e})"
        )
        print(line)


if __name__ == "__main__":
    main()
