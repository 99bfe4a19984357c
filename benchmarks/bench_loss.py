"""Benchmark: ``modules.loss.IDDCLoss`` against a plain transcription (benchmarks/baselines.py).

The transcription follows docs/method.md#the-loss term by term.

For each map size (B = 16, C = 384, K = 27 by default) it reports, for forward and forward+backward:

* the median wall time over ``--repeats`` runs after one warm-up, both implementations in this process,
  alternating within each repeat;
* the peak memory of one forward+backward above what the inputs already hold (benchmarks/common.py's
  PeakMemory: on CUDA the most allocated; on the CPU the resident high-water mark). On the CPU each
  (implementation, size) runs in a fresh subprocess, so that neither reuses the other's freed heap,
  with torch first warmed up on a tiny problem.

The shifts are fixed to (1, 5, 9): three distinct classes (s and B - s are the same term), so the
implementation cannot skip a duplicate negative and the comparison is its worst case.

    python benchmarks/bench_loss.py [--device cpu|cuda] [--repeats 5] [--sizes 14 28]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file, benchmarks/ is first on the path

import torch

from benchmarks.baselines import reference_loss
from benchmarks.common import PeakMemory, check_counts, mib, sync
from modules.loss import IDDCLoss
from utils.cli import ArgumentParser, check_at_least, entry_point, resolve_device

IMPLEMENTATIONS = ("iddc", "reference")
KEYS = ("pos", "neg", "balance", "entropy", "total")


def batch_shifts(batch):
    """(1, 5, 9), folded into 1..B-1 for batches under 10."""
    return tuple(1 + (s - 1) % (batch - 1) for s in (1, 5, 9))


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
    shifts = batch_shifts(f0.shape[0])
    if impl == "iddc":
        out = IDDCLoss()(f0, f1, z0, z1, neg_shifts=shifts)
    else:
        out = reference_loss(f0, f1, z0, z1, shifts)
    return out, (z0, z1)


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


def time_impls(inputs, repeats, device):
    """Median forward and forward+backward ms per implementation.

    The implementations alternate within each repeat (one warm-up round first), so that a burst of
    load from other processes on a shared machine hits both rather than one.
    """
    times = {impl: ([], []) for impl in IMPLEMENTATIONS}
    for i in range(repeats + 1):
        order = IMPLEMENTATIONS if i % 2 == 0 else IMPLEMENTATIONS[::-1]
        for impl in order:
            fwd, both = time_once(impl, inputs, device)
            if i > 0:  # round 0 is the warm-up
                times[impl][0].append(fwd)
                times[impl][1].append(both)
    return {impl: (statistics.median(f) * 1e3, statistics.median(b) * 1e3) for impl, (f, b) in times.items()}


def measure_memory_here(impl, args, size):
    """Peak memory (bytes, None where not measurable) of one forward+backward in this process."""
    # Warm torch up on a tiny problem so that one-time costs (kernels, thread pools) are not counted.
    tiny = make_inputs(args.batch_size, 3, 8, 5, args.device)
    for warm_up in IMPLEMENTATIONS:
        out, _ = run_impl(warm_up, tiny)
        out["total"].backward()
    inputs = make_inputs(args.batch_size, size, args.channels, args.clusters, args.device)
    with PeakMemory(args.device) as memory:
        out, _ = run_impl(impl, inputs)
        out["total"].backward()
    return memory.peak


def measure_memory(impl, args, size):
    if torch.device(args.device).type == "cuda":
        return measure_memory_here(impl, args, size)
    options = {"--device": args.device, "--batch-size": args.batch_size, "--channels": args.channels}
    options.update({"--clusters": args.clusters, "--threads": args.threads})
    command = [sys.executable, os.path.abspath(__file__), *(str(v) for item in options.items() for v in item)]
    result = subprocess.run([*command, "--_memory", impl, str(size)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the memory run of {impl} at {size}x{size} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"]


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs a measurement")
    parser.add_argument("--sizes", type=int, nargs="+", default=[14, 28], help="feature map sides")
    parser.add_argument("--batch-size", type=int, default=16, help="images in the batch (B)")
    parser.add_argument("--channels", type=int, default=384, help="feature channels (C)")
    parser.add_argument("--clusters", type=int, default=27, help="clusters (K)")
    parser.add_argument(
        "--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads (default: 2, at most the cores)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--_memory", nargs=2, metavar=("IMPL", "SIZE"), help=argparse.SUPPRESS)
    return parser


@entry_point
def main(argv=None):
    args = build_parser().parse_args(argv)
    args.device = resolve_device(args.device)
    check_counts(args, {"--repeats": 1, "--batch-size": 2, "--channels": 1, "--clusters": 1, "--threads": 1})
    for size in args.sizes:
        check_at_least(size, "--sizes", 1)
    torch.set_num_threads(args.threads)

    if args._memory:
        impl, size = args._memory[0], int(args._memory[1])
        print(json.dumps({"peak_bytes": measure_memory_here(impl, args, size)}))
        return 0

    print(
        f"device={args.device} threads={torch.get_num_threads()} B={args.batch_size} C={args.channels} "
        f"K={args.clusters} shifts={batch_shifts(args.batch_size)} repeats={args.repeats} (median after 1 warm-up), "
        f"torch {torch.__version__}"
    )
    rows = []
    for size in args.sizes:
        inputs = make_inputs(args.batch_size, size, args.channels, args.clusters, args.device)
        # Agreement check (values and gradients) before timing.
        outs, grads = {}, {}
        for impl in IMPLEMENTATIONS:
            out, (z0, z1) = run_impl(impl, inputs)
            out["total"].backward()
            outs[impl] = {k: out[k].item() for k in KEYS}
            grads[impl] = (z0.grad, z1.grad)
        rel = max(abs(outs["iddc"][k] - outs["reference"][k]) / max(abs(outs["reference"][k]), 1e-12) for k in KEYS)
        gdiff = max(float((a - b).abs().max()) for a, b in zip(grads["iddc"], grads["reference"]))
        gmax = max(float(b.abs().max()) for b in grads["reference"])
        row = {"size": size, "max_rel_diff_values": rel, "max_abs_diff_grads": gdiff, "grad_absmax": gmax}
        timings = time_impls(inputs, args.repeats, args.device)
        for impl in IMPLEMENTATIONS:
            row[impl + "_fwd_ms"], row[impl + "_fwdbwd_ms"] = timings[impl]
            row[impl + "_peak"] = None if args.no_memory else measure_memory(impl, args, size)
        rows.append(row)
        del inputs

    hdr = f"{'map':>6} | {'impl':>9} | {'fwd ms':>9} | {'fwd+bwd ms':>10} | {'peak MiB':>9}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        for impl in ("reference", "iddc"):
            print(
                f"{r['size']:>3}x{r['size']:<2} | {impl:>9} | {r[impl + '_fwd_ms']:9.1f} | "
                f"{r[impl + '_fwdbwd_ms']:10.1f} | {mib(r[impl + '_peak'], 9)}"
            )
    print()
    for r in rows:
        sp_f = r["reference_fwd_ms"] / r["iddc_fwd_ms"]
        sp_b = r["reference_fwdbwd_ms"] / r["iddc_fwdbwd_ms"]
        line = f"{r['size']}x{r['size']}: speed-up fwd {sp_f:.2f}x, fwd+bwd {sp_b:.2f}x"
        if r["iddc_peak"] is not None and r["reference_peak"] is not None:
            line += f"; peak memory iddc/reference = {r['iddc_peak'] / max(r['reference_peak'], 1):.3f}"
        line += (
            f"; agreement: values max rel diff {r['max_rel_diff_values']:.1e}, "
            f"grads max abs diff {r['max_abs_diff_grads']:.1e} (grad abs max {r['grad_absmax']:.1e})"
        )
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
