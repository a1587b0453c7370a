"""Shared test helpers: fake run directories written through the real run-directory code, benchmark scripts as
modules, small significance studies (run directories or tidy rows)."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from adaptertune import runs
from adaptertune.config import Config


def write_fake_run(root: Path, *, features: dict | None = None, status: str = "complete",
                   summary: dict | None = None, **config) -> Path:
    """A run directory as the trainer leaves it, with the given config fields and summary values.

    `features` maps names ("frozen", "adapted", "labels", "indices", ...) to arrays.
    """
    cfg = Config(**config)
    path = Path(root) / cfg.run_id
    runs.write_json(path / "config.json", cfg.to_dict())
    runs.write_lines(path / "metrics.jsonl", [{"epoch": 1, "split": "val", "loss": 1.0, "acc1": 50.0}])
    if features is not None:
        runs.save_arrays(path / "features.safetensors", features)
    runs.write_json(path / "summary.json", {"status": status, **(summary or {})})
    return path


def load_benchmark(name: str):
    """benchmarks/{name}.py imported as a module (benchmarks/ is not a package)."""
    path = Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def make_run(tmp_path):
    """make_run(**config, features=..., summary={"test_acc1": ...}) -> run dir under tmp_path/runs."""
    return lambda **kw: write_fake_run(tmp_path / "runs", **kw)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def quick_demo_runs(tmp_path_factory):
    """The quick offline demo's runs (`adaptertune demo --quick`), trained once per test session."""
    from adaptertune import demo

    return demo.runs(tmp_path_factory.mktemp("quick-demo") / "runs", quick=True, log=lambda *a: None)


# -- significance studies (test_significance, test_claims) -------------------------------------------------

DATASETS = ("cifar10", "pets")
BACKBONES = ("deit_tiny_patch16_224", "vit_small_patch16_224")
RANKS = (4, 8, 16)


def study(make_run, seeds=(0, 1, 2), gain=10.0, full_gain=6.0, noise=0.3, rng=None, skip=()):
    """A small study: every dataset x backbone, head / full / adapter at RANKS, accuracy rising with rank."""
    rng = rng or np.random.default_rng(0)
    for i, d in enumerate(DATASETS):
        for j, b in enumerate(BACKBONES):
            base = 60.0 + 5 * i + 3 * j
            for s in seeds:
                runs = [("head", None, base), ("full", None, base + full_gain)]
                runs += [("adapter", r, base + gain - 4.0 / math.log2(r)) for r in RANKS]
                for method, rank, acc in runs:
                    if (d, b, method, rank, s) in skip:
                        continue
                    test = acc + rng.normal(0, noise)
                    make_run(dataset=d, backbone=b, method=method, rank=rank or 16, seed=s,
                             summary={"test_acc1": test, "best_val_acc1": acc + rng.normal(0, noise)})


def rows(values, *, val=None):
    """Tidy rows from {(dataset, backbone, method, rank): [metric for seeds 0, 1, ...]}."""
    out = []
    for (d, b, m, r), accs in values.items():
        for s, acc in enumerate(accs):
            out.append({"dataset": d, "backbone": b, "method": m, "rank": r, "seed": s, "test_acc1": acc,
                        "best_val_acc1": (val or {}).get((d, b, m, r), acc)})
    return out
