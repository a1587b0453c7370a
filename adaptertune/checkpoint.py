"""The epoch checkpoint of a run, in a format that cannot execute code when loaded.

One `checkpoint.safetensors`: every tensor under a prefix — "trainable/NAME" (the weights now),
"best/NAME" (the weights best on validation), "frozen/KEY" (the frozen features), "opt/I/KEY"
(AdamW's per-parameter state, flattened) — and one JSON string in its metadata holding the rest:
epoch, step, best validation accuracy, training seconds, the optimizer's param groups and
non-tensor state, and the run's identity, which a resume must match.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from . import runs

NAME = "checkpoint.safetensors"


class Unreadable(Exception):
    """The checkpoint cannot be used (truncated, not safetensors, inconsistent)."""


def save(path: Path, *, trainable: dict, best: dict, frozen: dict[str, np.ndarray], optimizer: dict,
         meta: dict) -> None:
    from safetensors.torch import save

    tensors = {f"trainable/{k}": v for k, v in trainable.items()}
    tensors.update({f"best/{k}": v for k, v in best.items()})
    tensors.update({f"frozen/{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in frozen.items()})
    plain_state = {}
    for i, state in optimizer["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"opt/{i}/{key}"] = value
            else:
                plain_state.setdefault(str(i), {})[key] = value
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {**meta, "param_groups": optimizer["param_groups"], "plain_state": plain_state}
    blob = save(tensors, metadata={"meta": json.dumps(meta, allow_nan=False)})
    runs.atomic_write(path, lambda f: f.write(blob))


def load(path: Path) -> dict:
    """{"trainable", "best", "frozen", "optimizer", **meta}, tensors on the CPU (load_state_dict moves
    them); raises Unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = json.loads(f.metadata()["meta"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        out = {"trainable": {}, "best": {}, "frozen": {}}
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            kind, _, name = key.partition("/")
            if kind == "opt":
                i, _, k = name.partition("/")
                state.setdefault(int(i), {})[k] = value
            elif kind in out:
                out[kind][name] = value.numpy() if kind == "frozen" else value
            else:
                raise ValueError(f"unexpected tensor {key!r}")
        for i, plain in meta.pop("plain_state").items():
            state.setdefault(int(i), {}).update(plain)
        out["optimizer"] = {"state": state, "param_groups": meta.pop("param_groups")}
        missing = {"epoch", "step", "best_val_acc1", "train_seconds", "identity"} - set(meta)
        if missing:
            raise ValueError(f"no {', '.join(sorted(missing))}")
    except Exception as e:  # safetensors raises its own types for every kind of bad file
        raise Unreadable(f"{e.__class__.__name__}: {e}".splitlines()[0]) from None
    return {**meta, **out}
