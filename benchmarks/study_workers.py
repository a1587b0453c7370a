"""Wall time of one small study with 1 vs 2 local CPU workers (`adaptertune study run --workers N`).

    python benchmarks/study_workers.py [--ranks 1..8] [--seeds 0..1] [--epochs 2] [--train-samples 2000]

The study is the planted task on the tiny random `vit_nano` (no download): head-only plus adapters at
--ranks x --seeds. Each setting runs the whole study from scratch into its own folder through the real
worker processes (`study.run_workers`), the machine's cores split between the workers
(OMP_NUM_THREADS = cores / workers). Prints both wall times and their ratio, with the core count and
the load average beside them: on a shared machine other work changes the figures.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from adaptertune import study

STUDY = """
name = "bench"
out = "{out}"
datasets = ["planted"]
backbones = ["vit_nano"]
methods = ["head", "adapter"]
ranks = "{ranks}"
seeds = "{seeds}"
[overrides]
weights = "none"
blocks = "last:1"
augment = false
epochs = {epochs}
batch_size = 64
lr = 0.3
warmup_epochs = 0.5
train_samples = {train_samples}
test_samples = 200
feature_samples = 200
log_every = 0
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", default="1..8")
    p.add_argument("--seeds", default="0..1")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-samples", type=int, default=2000)
    p.add_argument("--smoke", action="store_true", help="a seconds-long version (2 runs of 1 epoch)")
    args = p.parse_args()
    if args.smoke:
        args.ranks, args.seeds, args.epochs, args.train_samples = "1", "0", 1, 100
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        seconds = {}
        for workers in (1, 2):
            path = Path(tmp) / f"study{workers}.toml"
            path.write_text(STUDY.format(out=Path(tmp) / f"runs{workers}", **vars(args)))
            s = study.load(path)
            start = time.perf_counter()
            rc = study.run_workers(s, study.devices(None, workers), log=lambda line: None)
            seconds[workers] = time.perf_counter() - start
            done = study.status(s).count("done")
            if rc or done != len(s.configs):
                raise SystemExit(f"{workers} workers: exit {rc}, {done}/{len(s.configs)} runs done")
    print(f"study: {len(s.configs)} runs (planted, vit_nano, {args.epochs} epochs of {args.train_samples} images)")
    print(f"cores: {os.cpu_count()}, 1-minute load average before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f}")
    print(f"1 worker : {seconds[1]:7.1f} s")
    print(f"2 workers: {seconds[2]:7.1f} s")
    print(f"ratio 1/2: {seconds[1] / seconds[2]:.2f}x")


if __name__ == "__main__":
    main()
