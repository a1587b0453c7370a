"""adaptertune: zero-initialized low-rank adapters in frozen Vision Transformers."""

__version__ = "0.1.0"
