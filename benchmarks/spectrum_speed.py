"""Speed and accuracy of `spectrum()` on a 50,000 × 768 feature shift (ViT-Base width).

    .venv/bin/python benchmarks/spectrum_speed.py [--n 50000] [--d 768] [--repeats 3]

Frozen features (float32, anisotropic) and adapted = frozen + a rank-16 power-law shift + noise, as
the trainer saves them. Prints the wall time of `spectrum(frozen, adapted)` (best of --repeats), the
agreement of its singular values with numpy.linalg.svd of the same centered float64 shift, and the
significant-direction count (16 planted). Timings depend on the BLAS threads the machine has free:
the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from adaptertune.analysis.spectrum import spectrum


def make_features(n: int, d: int, k: int, rng: np.random.Generator):
    """(frozen, adapted): (n, d) float32 each; the shift has k planted directions with σ² ∝ i^-1.5."""
    frozen = rng.standard_normal((n, d), dtype=np.float32)
    frozen *= np.geomspace(3.0, 0.1, d, dtype=np.float32)  # anisotropic, like real features
    strengths = (np.arange(1, k + 1) ** -0.75).astype(np.float32)
    low_rank = (rng.standard_normal((n, k), dtype=np.float32) * strengths) @ rng.standard_normal((k, d), dtype=np.float32)
    adapted = frozen + low_rank / np.sqrt(d, dtype=np.float32)
    adapted += 0.02 * rng.standard_normal((n, d), dtype=np.float32)
    return frozen, adapted


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--rank", type=int, default=16, help="planted directions")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-reference", action="store_true", help="skip the (slow) numpy SVD comparison")
    args = p.parse_args()

    frozen, adapted = make_features(args.n, args.d, args.rank, np.random.default_rng(0))
    print(f"shift {args.n} x {args.d} from float32 features; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        s = spectrum(frozen, adapted)
        times.append(time.perf_counter() - t)
    print(f"spectrum(frozen, adapted): best {min(times):.3f} s  (all: {', '.join(f'{t:.3f}' for t in times)})")
    print(f"significant directions {s.significant} (planted {args.rank}), recommended rank {s.recommended_rank}, "
          f"effective rank {s.effective_rank:.1f}, rank@90/95/99 {s.rank_at[0.9]}/{s.rank_at[0.95]}/{s.rank_at[0.99]}, "
          f"noise bulk white: {s.noise.white}")

    if not args.no_reference:
        delta = adapted.astype(np.float64) - frozen.astype(np.float64)
        delta -= delta.mean(axis=0)
        t = time.perf_counter()
        ref = np.linalg.svd(delta, compute_uv=False)
        took = time.perf_counter() - t
        rel = np.abs(s.singular_values - ref) / ref
        print(f"numpy.linalg.svd: {took:.3f} s; max relative difference over all {len(ref)} singular values "
              f"{rel.max():.2e} (σ_min/σ_1 = {ref[-1] / ref[0]:.1e})")


if __name__ == "__main__":
    main()
