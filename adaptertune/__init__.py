"""adaptertune: zero-initialized low-rank adapters in frozen Vision Transformers.

    import adaptertune
    m = adaptertune.load("runs/cifar100-vit_small_patch16_224-adapter-r16-s0")
    m.predict(["photo.jpg"], top=5)   # [[(class name, probability), ...]]
"""

__version__ = "0.1.0"


def load(run_dir, device="cpu"):
    """Rebuild a finished run's model (backbone with its weights, adapters, head) for inference:
    an `adaptertune.inference.Trained` with `.model`, `.classes`, `.preprocess`, `.logits()`, `.predict()`."""
    from .inference import load as _load

    return _load(run_dir, device)
