"""adaptertune: zero-initialized low-rank adapters in frozen Vision Transformers.

    import adaptertune
    m = adaptertune.load("runs/cifar100-vit_small_patch16_224-adapter-r16-s0")
    m.predict(["photo.jpg"], top=5)   # [[(class name, probability), ...]]

The public API (each name imported on first use, so `import adaptertune` stays cheap):

    load(run_dir)          a finished run's model for inference (inference.py)
    load_runs(path)        a table of runs under `path`: config + summary, one row each (api.py)
    train(config, out)     train a configuration (or a rank x seed sweep of it) into run directories (api.py)
    analysis               pure analyses on arrays and tables: spectrum, fit_sweep, compare, ... (no files written)
    plots                  every figure, as a function returning a matplotlib Figure
"""

__version__ = "0.1.0"


def load(run_dir, device="cpu", merge=True):
    """Rebuild a finished run's model (backbone with its weights, adapters / LoRA / prompts, head) for inference:
    an `adaptertune.inference.Trained` with `.model`, `.classes`, `.preprocess`, `.logits()`, `.predict()`.
    A LoRA run's updates are merged into the weights unless `merge=False`."""
    from .inference import load as _load

    return _load(run_dir, device, merge)


_LAZY = {"load_runs": ("adaptertune.api", "load_runs"), "train": ("adaptertune.api", "train"),
         "analysis": ("adaptertune.analysis", None), "plots": ("adaptertune.analysis.plots", None)}
__all__ = ["__version__", "load", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'adaptertune' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    return value if attr is None else getattr(value, attr)
