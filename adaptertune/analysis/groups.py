"""Which runs are one configuration, what a configuration is called, in which order, and which rank wins.

Every analysis, the report and the demo group and pair runs through here, so they agree:

- **one configuration**: equal `Config.config_key()` (config.py: every result-changing field but
  the seed). Seeds are paired only within one configuration.
- **one sweep**: equal `sweep_key`, the configuration up to the adapter rank (what capacity fits
  and validation chooses a rank within).
- **labels** name a configuration within its (dataset, backbone): the method, `r{rank}` for
  the methods with a capacity axis (adapter, lora; vpt: its prompt tokens), then what differs from the reference protocol (Config's defaults) in the run-id
  style (placement, blocks, init, activation, `x{scale}`, adapter_scaling, lora targets joined
  by `+`, vpt_mode), then any other identity field that
  takes more than one value among the runs of that method in the folder (`lr=0.001`), unless
  it has the reference value. E.g. `adapter-r8`, `adapter-r8-attn-relu-x0.1`, `head-lr=0.03`.
  A sweep's label drops the rank: `adapter`, `adapter-attn-relu-x0.1`.
- **order**: selected sweeps, then adapters by sweep and numeric rank (r1, r2, r4, ... r32),
  then full, head and other methods.
- **ties**: the rank chosen on validation is the one with the highest mean validation accuracy,
  and on a tie the smaller rank (`choose_rank`).

Imports no torch.
"""

from __future__ import annotations

import dataclasses
import json
import re

from ..config import METHOD_FIELDS, Config
from ..errors import UserError

VARIANT = ("placement", "blocks", "init", "activation", "scale",   # shown whenever not the reference
           "adapter_scaling", "lora_targets", "vpt_mode")
_NAMED = ("dataset", "backbone", "method", "rank", "seed")         # named by the pair, the method, the rank
_REFERENCE = Config()
_FIELDS = {f.name for f in dataclasses.fields(Config)}
_RANKED = re.compile(rf"^({'|'.join(METHOD_FIELDS)})-r(\d+)(.*)$")  # the methods with a capacity axis
TIE_RULE = "the highest mean validation accuracy over seeds; on a tie, the smaller rank"


def config_of(d: dict) -> Config:
    """The Config of a config.json dict or a tidy row (missing fields: the defaults; CSV strings: the
    field's type). Raises UserError for a value that is not of its field's type."""
    values = {}
    for k, v in d.items():
        if k not in _FIELDS or v is None or v == "":
            continue
        default = getattr(_REFERENCE, k)
        if isinstance(v, str) and not isinstance(default, str):
            try:
                v = v.strip().lower() in ("1", "true", "yes") if isinstance(default, bool) else (
                    int(float(v)) if isinstance(default, int) else float(v))
            except ValueError:
                raise UserError(f"{k} {v!r} is not a number") from None
        values[k] = v
    return Config(**values)


def config_key(d: dict) -> str:
    return config_of(d).config_key()


def sweep_key(d: dict) -> str:
    """`config_key` with the rank set aside: equal for the ranks and seeds of one adapter sweep."""
    return dataclasses.replace(config_of(d), rank=_REFERENCE.rank).config_key()


def _part(name: str, value) -> str:
    if name == "scale":
        return f"x{value:g}"
    if name == "lora_targets":
        return str(value).replace(",", "+")
    return str(value).replace(":", "") if name in VARIANT else f"{name}={value}"


def labels(configs: list[dict]) -> list[str]:
    """One label per config (config.json dicts or tidy rows), unique per configuration within its
    (dataset, backbone): see the module docstring."""
    cfgs = [config_of(c) for c in configs]
    idents = [c.identity() for c in cfgs]
    seen: dict[tuple, set] = {}
    for c, ident in zip(cfgs, idents):
        for k, v in ident.items():
            seen.setdefault((c.dataset, c.backbone, c.method, k), set()).add(json.dumps(v, sort_keys=True))
    out = []
    for c, ident in zip(cfgs, idents):
        varies = [k for k in ident if k not in _NAMED and k not in VARIANT
                  and len(seen[c.dataset, c.backbone, c.method, k]) > 1]
        parts = [c.method] + ([f"r{c.rank}"] if c.method in METHOD_FIELDS else [])
        parts += [_part(k, ident[k]) for k in (*VARIANT, *varies) if k in ident and ident[k] != getattr(_REFERENCE, k)]
        out.append("-".join(parts))
    keys: dict[tuple, set] = {}
    for c, lab in zip(cfgs, out):  # a value's text can hide a difference (1e-7 vs 1.0000001e-7): say so
        keys.setdefault((c.dataset, c.backbone, lab), set()).add(c.config_key())
    return [lab if len(keys[c.dataset, c.backbone, lab]) == 1 else f"{lab}-{c.config_key()}"
            for c, lab in zip(cfgs, out)]


def labelled_rows(runs) -> list[dict]:
    """`Run.row()` of each run with its "label" (from the runs' full configs)."""
    return [{**run.row(), "label": lab} for run, lab in zip(runs, labels([r.config for r in runs]))]


def split(label: str) -> tuple[str, int | None]:
    """(sweep label, rank) of a label with a capacity axis ("adapter-r8-attn" -> ("adapter-attn", 8),
    "vpt-r4" -> ("vpt", 4)); (label, None) else."""
    m = _RANKED.match(label)
    return (m.group(1) + m.group(3), int(m.group(2))) if m else (label, None)


def ranked(sweep: str, rank: int) -> str:
    """The label of `rank` in `sweep` (the inverse of `split`)."""
    method, dash, rest = sweep.partition("-")
    return f"{method}-r{rank}{dash}{rest}"


def order(label: str) -> tuple:
    """Sort key of labels: selected sweeps, adapters by sweep then numeric rank, full, head, the rest."""
    sweep, rank = split(label)
    if rank is not None:
        return (1, sweep, rank, label)
    method = label.split("-")[0]
    kind = 0 if method == "adapter" else {"full": 2, "head": 3}.get(method, 4)
    return (kind, label, 0, label)


def choose_rank(val_by_rank: dict) -> int:
    """The rank with the highest mean validation accuracy; on a tie, the smaller rank (`TIE_RULE`)."""
    if not val_by_rank:
        raise ValueError("no ranks to choose from")
    return min(val_by_rank, key=lambda r: (-val_by_rank[r], r))
