"""Per-step time of one run in 1 process against 2 gloo processes (torchrun) at the same global batch, on the CPU.

    python benchmarks/ddp_overhead.py [--backbone vit_micro] [--method adapter] [--batch-size 64] [--epochs 3]

Each setting trains the same configuration (the synthetic task, a random tiny ViT, no download) from
scratch through `adaptertune train` in a fresh folder: one process with all the machine's cores as
threads, one process with half of them (what each DDP process gets), and `torchrun --nproc-per-node 2`
with half of them each (gloo). Per-step time is the train loop's seconds (metrics.jsonl, rank 0) over
its steps, from the epochs after the first (the first builds DDP's buckets and warms the allocator).
The overhead of DDP is the 2-process step against the 1-process step on all cores; the 1-process
half-core step shows what ideal splitting of the compute would give (half of it). A CPU measures
the gloo all-reduce and the extra process, not GPU scaling: no multi-GPU claim follows from it. On a
shared machine other work changes the figures; the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def per_step(out: Path, steps: int) -> tuple[float, int]:
    """(median seconds per step over the epochs after the first, trainable parameters) of the run in `out`."""
    (run_dir,) = out.iterdir()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = sorted(r["seconds"] / steps for r in rows if r["split"] == "train" and r["epoch"] > 1)
    summary = json.loads((run_dir / "summary.json").read_text())
    return times[len(times) // 2], summary["trainable_params"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="vit_micro")
    p.add_argument("--method", default="adapter")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=64, help="the global batch")
    p.add_argument("--train-samples", type=int, default=1600)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    cores = os.cpu_count() or 2
    train = ["train", "--dataset", "synthetic", "--backbone", args.backbone, "--weights", "none", "--method", args.method,
             "--rank", str(args.rank), "--batch-size", str(args.batch_size), "--train-samples", str(args.train_samples),
             "--test-samples", "64", "--feature-samples", "32", "--epochs", str(args.epochs), "--val-fraction", "0.05",
             "--device", "cpu", "--log-every", "0", "--quiet"]
    n_train = args.train_samples - max(1, round(args.train_samples * 0.05))
    steps = -(-n_train // args.batch_size)
    settings = {
        f"1 process,  {cores} threads": ([sys.executable, "-m", "adaptertune"], cores),
        f"1 process,  {cores // 2} thread(s)": ([sys.executable, "-m", "adaptertune"], cores // 2),
        f"2 processes, {cores // 2} thread(s) each (gloo)": (
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "adaptertune"],
            cores // 2),
    }
    load_before = os.getloadavg()[0]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (command, threads)) in enumerate(settings.items()):
            out = Path(tmp) / str(i)
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads)),
                   "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
            done = subprocess.run([*command, *train, "--out", str(out)], env=env, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{name}: exit {done.returncode}\n{done.stderr[-2000:]}")
            results[name], trainable = per_step(out, steps)
    print(f"{args.backbone} {args.method} (rank {args.rank}): {trainable:,} trainable parameters all-reduced per step; "
          f"global batch {args.batch_size}, {steps} steps/epoch, median of epochs 2..{args.epochs}")
    print(f"cores: {cores}, 1-minute load average before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f}")
    names = list(results)
    for name in names:
        print(f"{name:<40} {1000 * results[name]:8.1f} ms/step")
    one, half, two = (results[n] for n in names)
    print(f"2 processes vs 1 process on all cores: {1000 * (two - one):+.1f} ms/step, ratio {two / one:.2f}")
    print(f"2 processes vs ideal split (half of the 1-thread step): {1000 * (two - half / 2):+.1f} ms/step, "
          f"ratio {two / (half / 2):.2f}")


if __name__ == "__main__":
    main()
