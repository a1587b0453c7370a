"""Tables as the analyses print and write them: plain text, Markdown and CSV, the p-value format
they share, and the folder they go to.

A table is a header (k,) and rows of k strings each; `align` optionally gives one "l" or "r" per
column (default: all left).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .. import runs


# The analyses behind `adaptertune analyze NAME` and the report's sections: name -> the module whose
# analyze_runs / add_arguments / run_command serve it (the spectrum's run command is apart from the
# pure spectrum, which the recommendation and the capacity model import).
ANALYSIS_MODULES = {"spectrum": "spectrum_runs", "capacity": "capacity", "significance": "significance"}

def text_table(head, rows, align: str | None = None) -> str:
    """Columns padded to their widest cell, two spaces apart, trailing spaces removed."""
    lines = [list(head), *map(list, rows)]
    align = align or "l" * len(lines[0])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(line, widths, align)).rstrip()
                     for line in lines)


def markdown_table(head, rows, align: str | None = None) -> str:
    """A Markdown table; "|" in a cell is escaped, `align` sets each column's rule (":---" / "---:")."""
    esc = [[v.replace("|", r"\|") for v in line] for line in [head, *rows]]
    rule = {"l": ":---", "r": "---:"}
    return "\n".join(["| " + " | ".join(esc[0]) + " |",
                      "|" + "|".join(rule[a] if align else "---" for a in (align or esc[0])) + "|",
                      *["| " + " | ".join(line) + " |" for line in esc[1:]]])


def write_csv(path: Path, fields, rows, *, lineterminator: str = "\n") -> None:
    """Write dict rows under the header `fields` (other keys ignored, None and missing as empty), atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator=lineterminator)
    writer.writerow(fields)
    for row in rows:
        writer.writerow(["" if row.get(k) is None else row.get(k) for k in fields])
    runs.write_text(Path(path), buf.getvalue())


def p_value(p: float | None) -> str:
    """"-" for none, 2 significant digits in scientific notation below 1e-3, else 3 significant digits."""
    if p is None:
        return "-"
    return f"{p:.1e}" if 0 < p < 1e-3 else ("0" if p == 0 else f"{p:.3g}")


def count(n: float | None) -> str:
    """A parameter count in 3 significant digits: 840, 12.3k, 4.51M, 1.2G ("-" for none)."""
    if n is None:
        return "-"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def output_folder(args) -> Path:
    """Where a command writes: --out, else `analysis` beside the run folder's contents (or the CSV file)."""
    source = Path(args.runs)
    return args.out or (source if source.is_dir() else source.parent) / "analysis"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"$<$", ">": r"$>$",
        "Γ": r"$\Gamma$", "≥": r"$\geq$", "≤": r"$\leq$", "×": r"$\times$", "α": r"$\alpha$", "−": "-"}


def latex_escape(s: str) -> str:
    """`s` with LaTeX's special characters escaped and a few Unicode symbols in math mode."""
    parts = str(s).replace(">=", "\0g").replace("<=", "\0l")
    return "".join(_TEX.get(ch, ch) for ch in parts).replace("\0g", r"$\geq$").replace("\0l", r"$\leq$")
