"""Shared test helpers: fake run directories written through the real run-directory code, benchmark scripts as modules."""

import importlib.util
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
