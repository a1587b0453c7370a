"""Claims files: the schema of a claim (`Claim`), reading and validating a claims TOML file
(`load_claims`, `parse_claims`). Their verdicts are claims.py's.

Imports no torch and no plotting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UserError
from .stattests import CORRECTIONS, TESTS

KINDS = ("better_all", "mean_diff", "wins", "monotone", "elbow", "better_matched")


@dataclass(frozen=True)
class Claim:
    """One claim of a claims file. Methods are labels ("adapter", "adapter-r16", "head", "full"); for
    better_matched, a and b are families (`budgets.family`: "adapter", "lora-qkv+fc2", "vpt", "bitfit")."""
    id: str
    kind: str
    text: str = ""
    a: str | None = None
    b: str | None = None
    datasets: tuple | None = None
    backbones: tuple | None = None
    alpha: float | None = None
    test: str | None = None
    correction: str | None = None
    at_least: float | None = None
    at_most: float | None = None
    k: int | None = None
    m: int | None = None
    ranks: tuple | None = None
    diminishing: bool = False
    factor: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, False, "")}


_COMMON = {"id", "kind", "text", "alpha", "test", "correction", "datasets", "backbones"}
_KIND_FIELDS = {  # kind -> (required, optional)
    "better_all": ({"a", "b"}, set()),
    "mean_diff": ({"a", "b"}, {"at_least", "at_most"}),
    "wins": ({"a", "b", "k"}, {"m"}),
    "monotone": (set(), {"ranks", "diminishing"}),
    "elbow": ({"at_most"}, set()),
    "better_matched": ({"a", "b"}, {"factor"}),
}
_TYPES = {"id": str, "kind": str, "text": str, "a": str, "b": str, "test": str, "correction": str,
          "alpha": float, "at_least": float, "at_most": float, "k": int, "m": int, "diminishing": bool, "factor": float,
          "datasets": [str], "backbones": [str], "ranks": [int]}
_TOP = {"alpha", "test", "correction", "description", "claim"}


def _typed(value, kind, where: str):
    name = kind.__name__ if isinstance(kind, type) else f"a list of {kind[0].__name__}"
    if isinstance(kind, list):
        if not isinstance(value, list) or not value:
            raise UserError(f"{where} must be {name}s, got {value!r}")
        return tuple(_typed(v, kind[0], where) for v in value)
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise UserError(f"{where} must be {'a number' if kind is float else 'an integer' if kind is int else name}, "
                    f"got {value!r}")


def parse_claims(doc: dict, name: str = "claims") -> list[Claim]:
    """Validate a parsed claims document; file-level alpha/test/correction fill the claims' own."""
    unknown = set(doc) - _TOP
    if unknown:
        raise UserError(f"{name}: unknown top-level key(s) {', '.join(sorted(unknown))} "
                        f"(expected {', '.join(sorted(_TOP))})")
    defaults = {}
    for key in ("alpha", "test", "correction"):
        if key in doc:
            defaults[key] = _check_value(key, _typed(doc[key], _TYPES[key], f"{name}: {key}"), f"{name}: {key}")
    raw = doc.get("claim")
    if not isinstance(raw, list) or not raw or not all(isinstance(c, dict) for c in raw):
        raise UserError(f"{name}: no claims (write each as a [[claim]] table with id and kind)")
    claims, seen = [], set()
    for i, c in enumerate(raw, start=1):
        cid = c.get("id")
        label = f"{name}: claim {cid!r}" if isinstance(cid, str) and cid else f"{name}: claim #{i}"
        for req in ("id", "kind"):
            if req not in c:
                raise UserError(f"{label}: missing field '{req}'")
        kind = _typed(c["kind"], str, f"{label}: field 'kind'")
        if kind not in KINDS:
            raise UserError(f"{label}: field 'kind' {kind!r} is not one of {', '.join(KINDS)}")
        required, optional = _KIND_FIELDS[kind]
        for key in c:
            if key not in _COMMON | required | optional:
                raise UserError(f"{label}: field '{key}' does not apply to kind '{kind}' "
                                f"(allowed: {', '.join(sorted(_COMMON | required | optional))})")
        for req in sorted(required):
            if req not in c:
                raise UserError(f"{label}: kind '{kind}' needs field '{req}'")
        values = {k: _check_value(k, _typed(v, _TYPES[k], f"{label}: field '{k}'"), f"{label}: field '{k}'")
                  for k, v in c.items()}
        if values["id"] in seen:
            raise UserError(f"{label}: duplicate id")
        seen.add(values["id"])
        claim = Claim(**{**defaults, **values})
        _check_claim(claim, label)
        claims.append(claim)
    return claims


def _check_value(key: str, v, where: str):
    if key == "alpha" and not 0 < v < 1:
        raise UserError(f"{where} must be in (0, 1), got {v}")
    if key == "test" and v not in TESTS:
        raise UserError(f"{where} {v!r} is not one of {', '.join(TESTS)}")
    if key == "correction" and v not in CORRECTIONS:
        raise UserError(f"{where} {v!r} is not one of {', '.join(CORRECTIONS)}")
    if key == "factor" and v < 1:
        raise UserError(f"{where} must be at least 1, got {v}")
    if key in ("k", "m") and v < 1:
        raise UserError(f"{where} must be at least 1, got {v}")
    if key == "ranks":
        if any(r < 1 for r in v) or len(set(v)) != len(v):
            raise UserError(f"{where} must be distinct positive ranks, got {list(v)}")
        return tuple(sorted(v))
    if key == "id" and not v.strip():
        raise UserError(f"{where} is empty")
    return v


def _check_claim(c: Claim, label: str) -> None:
    if c.a is not None and c.a == c.b:
        raise UserError(f"{label}: fields 'a' and 'b' name the same method {c.a!r}")
    if c.kind == "mean_diff":
        if c.at_least is None and c.at_most is None:
            raise UserError(f"{label}: kind 'mean_diff' needs field 'at_least' or 'at_most'")
        if c.at_least is not None and c.at_most is not None and c.at_least >= c.at_most:
            raise UserError(f"{label}: field 'at_least' ({c.at_least}) must be below 'at_most' ({c.at_most})")
    if c.kind == "wins" and c.m is not None and c.k > c.m:
        raise UserError(f"{label}: field 'k' ({c.k}) exceeds 'm' ({c.m})")
    if c.kind == "monotone" and c.ranks is not None and len(c.ranks) < 3:
        raise UserError(f"{label}: field 'ranks' needs at least 3 ranks for a trend test")
    if c.kind == "elbow" and c.at_most <= 0:
        raise UserError(f"{label}: field 'at_most' must be a positive rank")


def load_claims(path: Path) -> list[Claim]:
    """Read and validate a claims TOML file. Schema (every claim may set text, alpha, test,
    correction, datasets, backbones; file-level alpha/test/correction are defaults):

        alpha = 0.05
        [[claim]]
        id = "adapter-beats-head"
        kind = "better_all"            # a > b on every pair in scope (one-sided, each at alpha)
        a = "adapter"
        b = "head"
        [[claim]]  kind = "mean_diff"  a, b, at_least and/or at_most   (mean over pairs of a - b)
        [[claim]]  kind = "wins"       a, b, k, optional m             (a > b on >= k of m pairs)
        [[claim]]  kind = "monotone"   optional ranks, diminishing     (accuracy rises with rank)
        [[claim]]  kind = "elbow"      at_most                         (capacity elbow <= rank)
        [[claim]]  kind = "better_matched"  a, b families, optional factor (default 2)
                                       (a > b at every matched budget: budgets.py's rule)
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as e:
        raise UserError(f"{path}: unreadable ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    return parse_claims(doc, str(path))
